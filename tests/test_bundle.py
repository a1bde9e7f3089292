"""Bundles and their keys: real ed25519 keys and signatures, real zip files, every byte changed."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeops.core import bundle as bundle_mod
from edgeops.core import errors
from edgeops.core.bundle import (
    BUNDLE_FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    Bundle,
    canonical_json,
    write_bundle,
)
from edgeops.core.signing import (
    SigningKey,
    VerifyKey,
    generate_keypair,
    load_signing_key,
    load_verify_key,
    load_verify_keys,
)

MANIFEST_IN = {
    "name": "digits",
    "version": "1.2.0",
    "labels": ["zero", "one", "zwei", "trois", "ü"],
    "input": {"name": "x", "shape": [1, 8, 8, 1], "dtype": "float32"},
}
# Small payloads so the exhaustive tamper tests stay fast (the bundle is about 2 KB).
MODEL = bytes(range(256)) * 3
LABELS = b"zero\none\n"


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[SigningKey, VerifyKey, Path, Path]:
    key_path, pub_path = generate_keypair(tmp_path / "keys", "test")
    return load_signing_key(key_path), load_verify_key(pub_path), key_path, pub_path


@pytest.fixture
def key(keypair: tuple[SigningKey, VerifyKey, Path, Path]) -> SigningKey:
    return keypair[0]


@pytest.fixture
def vkey(keypair: tuple[SigningKey, VerifyKey, Path, Path]) -> VerifyKey:
    return keypair[1]


def _write(path: Path, key: SigningKey | None, **extra: object) -> Path:
    model = path.parent / "model.tflite"
    model.write_bytes(MODEL)
    files: dict[str, bytes | Path] = {"model.tflite": model, "meta/labels.txt": LABELS}
    return write_bundle(path, {**MANIFEST_IN, **extra}, files, key=key)


@pytest.fixture
def signed(tmp_path: Path, key: SigningKey) -> Path:
    return _write(tmp_path / "digits.bundle", key)


def _verify(path: Path, keys: list[VerifyKey], allow_unsigned: bool = False) -> None:
    with Bundle.open(path) as b:
        b.verify(keys, allow_unsigned=allow_unsigned)


def _rezip(src: Path, dst: Path, members: dict[str, bytes]) -> Path:
    """What an attacker with zipfile would do: write these members with default metadata."""
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


# -- round trip ------------------------------------------------------------------------------


def test_round_trip(signed: Path, vkey: VerifyKey, tmp_path: Path) -> None:
    with Bundle.open(signed) as b:
        assert (b.name, b.version, b.key_id) == ("digits", "1.2.0", vkey.key_id)
        assert b.files == ("meta/labels.txt", "model.tflite")
        m = b.manifest
        assert m["format"] == BUNDLE_FORMAT and m["format_version"] == FORMAT_VERSION
        assert m["labels"] == MANIFEST_IN["labels"] and m["input"] == MANIFEST_IN["input"]
        assert m["files"]["model.tflite"]["size"] == len(MODEL)
        result = b.verify([vkey])
        assert result.signed and result.key_id == vkey.key_id
        assert [(f.name, f.size) for f in result.files] == [
            ("meta/labels.txt", len(LABELS)),
            ("model.tflite", len(MODEL)),
        ]
        assert b.read("model.tflite") == MODEL
        out = b.extract(tmp_path / "out")
    assert out["meta/labels.txt"].read_bytes() == LABELS
    assert out["model.tflite"] == tmp_path / "out" / "model.tflite"
    assert json.loads(result.to_json())["files"][1]["sha256"] == result.files[1].sha256


def test_container_layout(signed: Path, key: SigningKey) -> None:
    with zipfile.ZipFile(signed) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [
            MANIFEST,
            SIGNATURE,
            "meta/labels.txt",
            "model.tflite",
        ]
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr for i in infos} == {0o644 << 16}
        assert {i.extra for i in infos} == {b""} and zf.comment == b""
        manifest = zf.read(MANIFEST)
        signature = json.loads(zf.read(SIGNATURE))
    assert manifest == canonical_json(json.loads(manifest))
    assert signature["algorithm"] == "ed25519" and signature["key_id"] == key.key_id
    assert signature["signature"]  # checked by every verify test


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "ü"]}) == '{"a":[1.5,"ü"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_output_is_deterministic(tmp_path: Path, key: SigningKey) -> None:
    a = _write(tmp_path / "a.bundle", key)
    os.utime(tmp_path / "model.tflite", (1, 1))  # timestamps of the inputs do not matter
    b = write_bundle(
        tmp_path / "b.bundle",
        dict(reversed(list(MANIFEST_IN.items()))),
        {"meta/labels.txt": LABELS, "model.tflite": MODEL},
        key=key,
    )
    assert a.read_bytes() == b.read_bytes()


# -- tampering -------------------------------------------------------------------------------


def _assert_rejected(path: Path, data: bytes, vkey: VerifyKey, what: str) -> None:
    path.write_bytes(data)
    try:
        _verify(path, [vkey])
    except errors.BundleError:
        return
    except Exception as e:
        pytest.fail(f"{what}: raised {e!r}, not a BundleError")
    pytest.fail(f"{what}: verified")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_change_is_caught(
    signed: Path, vkey: VerifyKey, tmp_path: Path, mask: int
) -> None:
    data = signed.read_bytes()
    assert 1000 < len(data) < 4000
    target = tmp_path / "tampered.bundle"
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= mask
        _assert_rejected(target, bytes(changed), vkey, f"byte {i} ^ {mask:#x}")


def test_every_truncation_is_caught(signed: Path, vkey: VerifyKey, tmp_path: Path) -> None:
    data = signed.read_bytes()
    target = tmp_path / "short.bundle"
    for n in range(len(data)):
        _assert_rejected(target, data[:n], vkey, f"first {n} bytes")


@pytest.mark.parametrize("extra", [b"\0", b"PK\x05\x06", b"x" * 1000])
def test_appended_or_prepended_bytes_are_caught(
    signed: Path, vkey: VerifyKey, tmp_path: Path, extra: bytes
) -> None:
    data = signed.read_bytes()
    _assert_rejected(tmp_path / "t.bundle", data + extra, vkey, "appended")
    _assert_rejected(tmp_path / "t.bundle", extra + data, vkey, "prepended")


def test_extra_member_is_named(signed: Path, vkey: VerifyKey) -> None:
    with zipfile.ZipFile(signed, "a") as zf:
        zf.writestr("payload.sh", b"echo owned\n")
    with pytest.raises(errors.BundleIntegrityError, match=r"unexpected member 'payload.sh'"):
        _verify(signed, [vkey])


def test_missing_member_is_named(signed: Path, vkey: VerifyKey, tmp_path: Path) -> None:
    members = _members(signed)
    del members["model.tflite"]
    rezipped = _rezip(signed, tmp_path / "r.bundle", members)
    with pytest.raises(errors.BundleIntegrityError, match=r"model.tflite is listed .* missing"):
        _verify(rezipped, [vkey])


def test_replaced_file_is_named(signed: Path, vkey: VerifyKey, tmp_path: Path) -> None:
    members = _members(signed)
    members["model.tflite"] = bytes(reversed(MODEL))
    rezipped = _rezip(signed, tmp_path / "r.bundle", members)
    with pytest.raises(errors.BundleIntegrityError, match=r"model.tflite sha256 differs"):
        _verify(rezipped, [vkey])
    members["model.tflite"] = MODEL + b"\0"
    rezipped = _rezip(signed, tmp_path / "r.bundle", members)
    with pytest.raises(errors.BundleIntegrityError, match=r"model.tflite size differs"):
        _verify(rezipped, [vkey])


def test_corrupt_member_data_is_named(signed: Path, vkey: VerifyKey) -> None:
    data = bytearray(signed.read_bytes())
    data[data.index(MODEL[:64]) + 10] ^= 0x01  # zipfile's CRC check fails on this member
    signed.write_bytes(data)
    with pytest.raises(errors.BundleIntegrityError, match=r"model.tflite is damaged"):
        _verify(signed, [vkey])


def test_rewritten_container_is_caught(signed: Path, vkey: VerifyKey, tmp_path: Path) -> None:
    # The same members, in the same order, written by plain zipfile: every hash and the
    # signature still match, only the container metadata differs.
    rezipped = _rezip(signed, tmp_path / "r.bundle", _members(signed))
    with pytest.raises(errors.BundleError, match="not in canonical form") as e:
        _verify(rezipped, [vkey])
    assert type(e.value) is errors.BundleError


def test_edited_manifest_without_resigning_fails_the_signature(
    signed: Path, vkey: VerifyKey, tmp_path: Path
) -> None:
    members = _members(signed)
    manifest = json.loads(members[MANIFEST])
    manifest["version"] = "9.9.9"
    members[MANIFEST] = canonical_json(manifest)
    rezipped = _rezip(signed, tmp_path / "r.bundle", members)
    with pytest.raises(errors.SignatureError, match="does not match the manifest"):
        _verify(rezipped, [vkey])


# -- signatures ------------------------------------------------------------------------------


def test_wrong_key_is_refused(signed: Path, tmp_path: Path) -> None:
    _, pub = generate_keypair(tmp_path, "other")
    other = load_verify_key(pub)
    with pytest.raises(errors.SignatureError, match="not a trusted key") as e:
        _verify(signed, [other])
    with Bundle.open(signed) as b:
        assert b.key_id is not None and b.key_id in str(e.value)
    # A signed bundle is checked even when unsigned ones are allowed.
    with pytest.raises(errors.SignatureError, match="none given"):
        _verify(signed, [], allow_unsigned=True)


def test_same_key_id_but_forged_signature_is_refused(signed: Path, vkey: VerifyKey) -> None:
    members = _members(signed)
    record = json.loads(members[SIGNATURE])
    forger = SigningKey.generate()
    record["signature"] = base64.b64encode(forger.sign(members[MANIFEST])).decode()
    members[SIGNATURE] = canonical_json(record)
    with zipfile.ZipFile(signed, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(errors.SignatureError, match="does not match"):
        _verify(signed, [vkey])


def test_unsigned_is_refused_unless_allowed(tmp_path: Path, vkey: VerifyKey) -> None:
    path = _write(tmp_path / "u.bundle", None)
    with Bundle.open(path) as b:
        assert b.key_id is None
        with pytest.raises(errors.SignatureError, match=r"^unsigned bundle"):
            b.verify([vkey])
        result = b.verify([], allow_unsigned=True)
    assert not result.signed and result.key_id is None
    assert SIGNATURE not in _members(path)


def test_verify_keys_are_picked_by_key_id(signed: Path, tmp_path: Path, vkey: VerifyKey) -> None:
    others = [load_verify_key(generate_keypair(tmp_path, f"k{i}")[1]) for i in range(3)]
    with Bundle.open(signed) as b:
        assert b.verify([*others, vkey]).key_id == vkey.key_id


# -- reading before verifying, bad bundles ---------------------------------------------------


def test_read_and_extract_need_a_verified_bundle(
    signed: Path, vkey: VerifyKey, tmp_path: Path
) -> None:
    with Bundle.open(signed) as b:
        with pytest.raises(RuntimeError, match="verify"):
            b.read("model.tflite")
        with pytest.raises(RuntimeError, match="verify"):
            b.extract(tmp_path / "out")
        b.verify([vkey])
        with pytest.raises(errors.BundleError, match="no file 'nope'"):
            b.read("nope")
    assert not (tmp_path / "out").exists()


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(errors.BundleError, match="is not a bundle: no such file"):
        Bundle.open(tmp_path / "missing.bundle")
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(errors.BundleError, match="is not a bundle"):
        Bundle.open(junk)
    plain = _rezip(junk, tmp_path / "plain.zip", {"readme.txt": b"hi"})
    with pytest.raises(errors.BundleError, match=r"has no manifest.json"):
        Bundle.open(plain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "is not an edgeops bundle"),
        ({"format_version": 2}, "format version 2 is not supported"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"files": {"../evil": {"sha256": "0" * 64, "size": 1}}}, "'..' parts"),
    ],
)
def test_bad_manifest(
    signed: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    members = _members(signed)
    members[MANIFEST] = canonical_json({**json.loads(members[MANIFEST]), **change})
    rezipped = _rezip(signed, tmp_path / "r.bundle", members)
    with pytest.raises(errors.BundleError, match=message):
        Bundle.open(rezipped)


def test_non_canonical_manifest_is_refused(signed: Path, tmp_path: Path) -> None:
    members = _members(signed)
    members[MANIFEST] = json.dumps(json.loads(members[MANIFEST]), indent=1).encode()
    with pytest.raises(errors.BundleError, match="not in canonical form"):
        Bundle.open(_rezip(signed, tmp_path / "r.bundle", members))


# -- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "../up", "a/../b", "a//b", "./a", "a/", "a\\b", MANIFEST, SIGNATURE],
)
def test_bad_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(errors.UsageError):
        write_bundle(tmp_path / "b.bundle", MANIFEST_IN, {name: b"x"}, key=None)
    assert list(tmp_path.iterdir()) == []


def test_file_and_directory_of_the_same_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError, match="also a directory"):
        write_bundle(tmp_path / "b.bundle", MANIFEST_IN, {"a": b"", "a/b": b""}, key=None)


@pytest.mark.parametrize(
    "manifest",
    [
        {**MANIFEST_IN, "files": {}},
        {**MANIFEST_IN, "format": BUNDLE_FORMAT},
        {"version": "1"},
        {"name": "x", "version": 1},
        {**MANIFEST_IN, "score": float("nan")},
        {**MANIFEST_IN, "blob": b"bytes"},
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, manifest: dict[str, object]) -> None:
    with pytest.raises(errors.UsageError):
        write_bundle(tmp_path / "b.bundle", manifest, {"m": b"x"}, key=None)
    assert list(tmp_path.iterdir()) == []


def test_missing_payload_file(tmp_path: Path) -> None:
    with pytest.raises(errors.InputDataError, match=r"nope.tflite"):
        write_bundle(tmp_path / "b.bundle", MANIFEST_IN, {"m": tmp_path / "nope.tflite"}, key=None)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(errors.OutputError, match="cannot write"):
        write_bundle(tmp_path / "no" / "such" / "b.bundle", MANIFEST_IN, {"m": b"x"}, key=key)


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fresh = out / "fresh.bundle"
    old = _write(out / "old.bundle", key, version="0.9")
    before = old.read_bytes()

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.os, "fsync", fail)
    for target in (fresh, old):
        with pytest.raises(errors.OutputError, match="No space left"):
            _write(target, key)
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "old.bundle"]
    assert old.read_bytes() == before


def test_payload_changing_while_written_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(MODEL)
    real = bundle_mod._describe

    def describe_then_change(name: str, src: bytes | Path) -> object:
        entry = real(name, src)
        model.write_bytes(MODEL[::-1])
        return entry

    monkeypatch.setattr(bundle_mod, "_describe", describe_then_change)
    with pytest.raises(errors.InputDataError, match="changed while"):
        write_bundle(tmp_path / "b.bundle", MANIFEST_IN, {"m": model}, key=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


# -- keys ------------------------------------------------------------------------------------


def test_generate_keypair_files(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path, "ci")
    assert (key_path.name, pub_path.name) == ("ci.key", "ci.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    signing, verify = load_signing_key(key_path), load_verify_key(pub_path)
    assert signing.key_id == verify.key_id == signing.verify_key.key_id
    assert len(verify.key_id) == 16 and verify == signing.verify_key
    sig = signing.sign(b"data")
    assert verify.verify(sig, b"data") and not verify.verify(sig, b"date")
    assert "PRIVATE" not in repr(signing) and signing.key_id in repr(signing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci.key", "ci.pub"]


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path)
    first = load_verify_key(pub_path).key_id
    with pytest.raises(errors.OutputError, match="already exists"):
        generate_keypair(tmp_path)
    assert load_verify_key(pub_path).key_id == first
    generate_keypair(tmp_path, overwrite=True)
    assert load_verify_key(pub_path).key_id != first
    assert load_signing_key(key_path).key_id == load_verify_key(pub_path).key_id


def test_key_file_errors(tmp_path: Path) -> None:
    key_path, pub_path = generate_keypair(tmp_path)
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    cases = [
        (lambda: load_verify_key(tmp_path / "none.pub"), "none.pub: no such key file"),
        (lambda: load_verify_key(bad), "bad.pub: not a PEM public key"),
        (lambda: load_verify_key(key_path), "edgeops.key: is a private key; pass the public .*pub"),
        (lambda: load_verify_key(ec_pub), "ec.pub: not an ed25519 key"),
        (lambda: load_signing_key(pub_path), "edgeops.pub: is a public key"),
        (lambda: load_signing_key(junk), "junk.key: not a PEM private key"),
        (lambda: load_verify_key(tmp_path), "is a directory"),
        (lambda: load_verify_keys([tmp_path / "keys"]), "no such key file"),
    ]
    for call, message in cases:
        with pytest.raises(errors.KeyFileError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


def test_load_verify_keys_reads_directories(tmp_path: Path) -> None:
    ids = {load_verify_key(generate_keypair(tmp_path, n)[1]).key_id for n in ("a", "b")}
    keys = load_verify_keys([tmp_path, tmp_path / "a.pub"])  # each key once
    assert {k.key_id for k in keys} == ids and len(keys) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.KeyFileError, match="no public key files"):
        load_verify_keys([empty])


# -- command line ----------------------------------------------------------------------------


def test_cli_keys_generate(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("keys", "generate", "--out", tmp_path / "k", "--name", "prod")
    assert r.code == 0, r.err
    key_id = load_verify_key(tmp_path / "k" / "prod.pub").key_id
    for text in ("prod.key", "prod.pub", key_id):
        assert text in r.out
    r = cli("keys", "generate", "--out", tmp_path / "k", "--name", "prod")
    assert r.code == errors.OutputError.exit_code
    assert r.err.startswith("error: ") and r.err.count("\n") == 1
    r = cli("keys", "generate", "--out", tmp_path / "k", "--name", "prod", "--force")
    assert r.code == 0 and load_verify_key(tmp_path / "k" / "prod.pub").key_id != key_id


def test_cli_verify(cli, signed: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, vkey, _, pub_path = keypair
    r = cli("verify", signed, "--trusted-key", pub_path)
    assert r.code == 0, r.err
    for text in ("digits", "1.2.0", "edgeops-bundle 1", vkey.key_id, "model.tflite", "768"):
        assert text in r.out
    r = cli("verify", signed, "--trusted-key", pub_path.parent, "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["key_id"] == vkey.key_id

    data = bytearray(signed.read_bytes())
    data[10] ^= 0x01  # a header field zipfile ignores
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(data)
    r = cli("verify", tampered, "--trusted-key", pub_path)
    assert r.code == errors.BundleError.exit_code == 13
    assert r.err.startswith("error: ") and r.err.count("\n") == 1
    assert "canonical form" in r.err and "Traceback" not in r.err


def test_cli_verify_errors(cli, signed: Path, keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, key_path, pub_path = keypair
    r = cli("verify", signed)
    assert r.code == errors.UsageError.exit_code and "--trusted-key" in r.err
    r = cli("verify", signed, "--trusted-key", key_path)
    assert r.code == errors.KeyFileError.exit_code and ".pub" in r.err
    r = cli("verify", signed, "--trusted-key", generate_keypair(tmp_path, "other")[1])
    assert r.code == errors.SignatureError.exit_code
    assert "not a trusted key" in r.err and r.err.count("\n") == 1
    unsigned = _write(tmp_path / "u.bundle", None)
    r = cli("verify", unsigned, "--trusted-key", pub_path)
    assert r.code == errors.SignatureError.exit_code
    assert r.err.startswith("error: unsigned bundle")
    r = cli("verify", unsigned, "--allow-unsigned")
    assert r.code == 0 and "unsigned" in r.out
    r = cli("verify", tmp_path / "missing.bundle", "--trusted-key", pub_path)
    assert r.code == 13 and "is not a bundle" in r.err


# -- boundaries ------------------------------------------------------------------------------


def test_bundle_and_signing_stay_light() -> None:
    heavy = ("tensorflow", "keras", "converters", "tf2onnx", "onnx", "numpy")
    probe = (
        "import sys\nimport edgeops.core.bundle, edgeops.core.signing\n"
        f"print(*[m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


# -- the device's store ----------------------------------------------------------------------


def test_the_store_installs_only_a_handle_it_verified(
    signed: Path, vkey: VerifyKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_agent.store import ModelStore

    store = ModelStore(tmp_path / "store", trusted_keys=[vkey])
    with Bundle.open(signed) as b, pytest.raises(errors.BundleError, match="not verified"):
        store.install(b)
    other = ModelStore(tmp_path / "other", trusted_keys=[])
    with pytest.raises(errors.BundleError):
        other.verify(signed)

    calls: list[Path] = []
    real = Bundle.verify

    def counted(self: Bundle, *args: object, **kwargs: object) -> object:
        calls.append(self.path)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Bundle, "verify", counted)
    entry = store.install_file(signed)
    assert len(calls) == 1, "a bundle is verified once on its way into the store"
    assert (entry.directory / "model.tflite").read_bytes() == MODEL
    assert store.current() is None, "installed, not yet current"

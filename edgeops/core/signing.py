"""ed25519 keys that sign bundles and verify them.

A key pair is two PEM files: ``NAME.key`` (the private key, PKCS8, unencrypted, mode 0600) signs
bundles where they are packaged; ``NAME.pub`` (SubjectPublicKeyInfo) goes to every device and
verifier that should trust them. A key is known by its *key id*: the first 16 hex digits of the
sha256 of its raw 32-byte public key, which signatures carry so a verifier can pick the right key.

This is a core module: the standard library and ``cryptography`` only, so it runs on a device.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeops.core.errors import KeyFileError, OutputError, UsageError, first_line
from edgeops.core.files import fsync_dir, stage

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
# Key files are a few hundred bytes; anything much larger is not a key.
_MAX_KEY_FILE = 64 * 1024


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class VerifyKey:
    """A trusted ed25519 public key. Equal keys have equal key ids."""

    public_key: Ed25519PublicKey = field(compare=False, repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id_of(self.public_key))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's ed25519 signature of ``data``."""
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class SigningKey:
    """An ed25519 private key that signs bundles. Its repr never shows key material."""

    private_key: Ed25519PrivateKey = field(compare=False, repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id_of(self.private_key.public_key()))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def generate_keypair(
    out_dir: Path, name: str = "edgeops", *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a new key pair ``out_dir/NAME.key`` and ``out_dir/NAME.pub``; return both paths.

    The private key is written with mode 0600. Each file is written atomically (a temporary file
    in the same directory, fsynced, then renamed). Existing files are kept, and
    :class:`OutputError` raised, unless ``overwrite`` is true.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UsageError(f"key name {name!r} must be a plain file name (no directories)")
    out = Path(out_dir)
    key_path = out / (name + PRIVATE_SUFFIX)
    pub_path = out / (name + PUBLIC_SUFFIX)
    if not overwrite:
        for p in (key_path, pub_path):
            if p.exists() or p.is_symlink():
                raise OutputError(
                    f"{p}: already exists; pass --force (overwrite=True) to replace it"
                )
    key = SigningKey.generate()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the directory ({e.strerror})") from None
    # Both files are staged before either is renamed into place, so a failure cannot leave a
    # new public key beside an old private key.
    staged: list[str] = []
    try:
        staged.append(stage(pub_path, key.verify_key.to_pem(), 0o644))
        staged.append(stage(key_path, key.to_pem(), 0o600))
        os.replace(staged[0], pub_path)
        os.replace(staged[1], key_path)
        staged.clear()
    except OSError as e:
        raise OutputError(f"{out}: cannot write the key files ({e.strerror})") from None
    finally:
        for tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(out)
    return key_path, pub_path


def load_signing_key(path: str | Path) -> SigningKey:
    """Load an unencrypted PKCS8 PEM ed25519 private key; :class:`KeyFileError` if it is not one."""
    p = Path(path)
    data = _read_key_file(p)
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise KeyFileError(
            f"{p}: is a public key; signing needs the private key ({PRIVATE_SUFFIX})"
        )
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data:
        raise KeyFileError(f"{p}: is an encrypted private key; edgeops reads unencrypted keys only")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{p}: not a PEM private key ({first_line(e, 120)})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an ed25519 key ({_kind(key)}); edgeops uses ed25519 only")
    return SigningKey(key)


def load_verify_key(path: str | Path) -> VerifyKey:
    """Load a PEM ed25519 public key; :class:`KeyFileError` if it is not one.

    A private key is refused, not turned into its public half: private keys do not belong on the
    machines that verify.
    """
    p = Path(path)
    data = _read_key_file(p)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(
            f"{p}: is a private key; pass the public key file ({PUBLIC_SUFFIX}) instead"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{p}: not a PEM public key ({first_line(e, 120)})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p}: not an ed25519 key ({_kind(key)}); edgeops uses ed25519 only")
    return VerifyKey(key)


def load_verify_keys(paths: Iterable[str | Path]) -> list[VerifyKey]:
    """Load trusted public keys. A directory stands for every ``*.pub`` file in it.

    Keys are returned in the order given (a directory's files sorted by name), each key id once.
    A directory without any ``.pub`` file is an error, so a typo cannot silently trust nothing.
    """
    keys: dict[str, VerifyKey] = {}
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(f for f in p.glob("*" + PUBLIC_SUFFIX) if not f.is_dir())
            if not files:
                raise KeyFileError(f"{p}: no public key files (*{PUBLIC_SUFFIX}) in this directory")
        else:
            files = [p]
        for f in files:
            key = load_verify_key(f)
            keys.setdefault(key.key_id, key)
    return list(keys.values())


def _read_key_file(p: Path) -> bytes:
    try:
        with p.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{p}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{p}: is a directory, expected a key file") from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read the key file ({e.strerror})") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{p}: too large to be a key file")
    return data


def _kind(key: object) -> str:
    return type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey")

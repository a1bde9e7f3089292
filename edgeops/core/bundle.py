"""Bundles: one signed file that carries a model to devices.

A bundle is one zip file, stored (not compressed), with these members in this order:

- ``manifest.json``: the caller's manifest (name, version, signature of the model, baseline, ...)
  plus ``format``, ``format_version`` and ``files`` (the size and sha256 of every payload file),
  as canonical JSON (:func:`canonical_json`);
- ``signature.json``, when signed: the ed25519 signature of the exact ``manifest.json`` bytes and
  the id of the key that made it;
- the payload files, sorted by name.

The container is deterministic: the same manifest, files and key give the same bytes. That is what
makes the container itself checkable: :meth:`Bundle.verify` checks the signature over the
manifest, each file's size and sha256 against the manifest, and then that the file's bytes equal
the container the writer builds from those members, so a change to anything, even a zip header
field that zip readers ignore (a timestamp, an attribute, a comment), fails verification.

What :meth:`Bundle.verify` raises, all :class:`~edgeops.core.errors.BundleError`:

- :class:`BundleError`: not a zip, no readable manifest, an unknown format or format version, a
  container that is not in canonical form;
- :class:`BundleIntegrityError`: a member missing, unexpected or duplicated, or a file whose size
  or sha256 differs from the manifest (a zip CRC error counts as such);
- :class:`SignatureError`: unsigned (unless allowed), signed by a key that is not trusted, or a
  signature that does not match the manifest.

This is a core module: the standard library and ``cryptography`` only, so devices can verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from edgeops.core.errors import (
    BundleError,
    BundleIntegrityError,
    InputDataError,
    OutputError,
    SignatureError,
    UsageError,
    first_line,
)
from edgeops.core.files import staged
from edgeops.core.manifest import Manifest
from edgeops.core.signing import SigningKey, VerifyKey
from edgeops.core.terminal import render, render_pairs

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "edgeops-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
SIGNATURE_ALGORITHM = "ed25519"
# Manifest keys that write_bundle sets; a caller's manifest must not hold them.
RESERVED_KEYS = ("format", "format_version", "files")

# A manifest holds a baseline profile and sample inputs, but never a model.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_MAX_SIGNATURE_BYTES = 4096
_CHUNK = 1024 * 1024
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_CREATE_SYSTEM = 3  # Unix, so that external_attr holds file permission bits
_ZIP_EXTERNAL_ATTR = 0o644 << 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID_HEX = re.compile(r"[0-9a-f]{16}")

# What reading a damaged zip can raise, from zipfile, zlib, struct and json. Every one of them is
# turned into a BundleError that names the bundle.
_CORRUPT: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,  # also json.JSONDecodeError, UnicodeDecodeError, binascii.Error
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
    RuntimeError,  # also RecursionError; zipfile raises it for encrypted members
)


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN or infinity."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


@dataclass(frozen=True)
class BundleFile:
    """A payload file as the manifest describes it."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VerifyResult:
    """What a successful :meth:`Bundle.verify` established."""

    name: str
    version: str
    signed: bool
    # The id of the trusted key whose signature verified; None for an allowed unsigned bundle.
    key_id: str | None
    files: tuple[BundleFile, ...]
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "format": BUNDLE_FORMAT,
            "format_version": self.format_version,
            "signed": self.signed,
            "key_id": self.key_id,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A few lines for the terminal."""
        head = render_pairs(
            [
                ("name", self.name),
                ("version", self.version),
                ("format", f"{BUNDLE_FORMAT} {self.format_version}"),
                ("signed by", f"key {self.key_id}" if self.signed else "nobody (unsigned)"),
            ]
        )
        rows = [(f.name, f"{f.size:,}", f.sha256[:16]) for f in self.files]
        return head + "\n\n" + render(["file", "bytes", "sha256"], rows)


def write_bundle(
    path: Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, bytes | Path],
    *,
    key: SigningKey | None,
) -> Path:
    """Write a bundle of ``files`` described by ``manifest``, signed with ``key`` (None: unsigned).

    ``manifest`` holds everything about the model (it must have string ``name`` and ``version``)
    and must not hold the keys this function sets: ``format``, ``format_version`` and ``files``.
    ``files`` maps names in the bundle (relative POSIX paths) to contents or to files to read.

    The file is written atomically: a temporary file in the same directory, fsynced, renamed into
    place. On any failure nothing appears at ``path``. Returns ``path``.
    """
    path = Path(path)
    _check_caller_manifest(manifest)
    problem = _names_problem(files)
    if problem:
        raise UsageError(f"bundle file names: {problem}")
    entries = {name: _describe(name, files[name]) for name in sorted(files)}
    full = {
        **manifest,
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "files": {e.name: {"sha256": e.sha256, "size": e.size} for e in entries.values()},
    }
    try:
        Manifest.parse(full)
    except BundleError as e:
        raise UsageError(str(e)) from None
    try:
        manifest_bytes = canonical_json(full)
    except (TypeError, ValueError) as e:
        raise UsageError(f"manifest is not plain JSON: {first_line(e)}") from None
    signature_bytes = None if key is None else _signature_json(key, manifest_bytes)

    def members() -> Iterator[tuple[str, int, Iterable[bytes]]]:
        yield MANIFEST, len(manifest_bytes), [manifest_bytes]
        if signature_bytes is not None:
            yield SIGNATURE, len(signature_bytes), [signature_bytes]
        for e in entries.values():
            src = files[e.name]
            chunks = _file_chunks(src, e) if isinstance(src, Path) else [bytes(src)]
            yield e.name, e.size, chunks

    try:
        with staged(path) as fp:
            _write_container(fp, members())
    except OSError as e:
        raise OutputError(f"{path}: cannot write the bundle ({e.strerror or e})") from None
    log.info(
        "wrote bundle %s (%d files, %s)", path, len(entries), key.key_id if key else "unsigned"
    )
    return path


class Bundle:
    """An open bundle file. Use :meth:`open`, as a context manager or with :meth:`close`.

    Opening reads and checks the manifest (and the signature record, if any) but trusts nothing:
    :meth:`read` and :meth:`extract` refuse to run until :meth:`verify` has succeeded, and they
    check each file's sha256 again as they read it.
    """

    def __init__(self, path: str | Path) -> None:
        """Open ``path``; prefer :meth:`Bundle.open`."""
        self.path = Path(path)
        self._verified = False
        try:
            self._fp: IO[bytes] = self.path.open("rb")
        except FileNotFoundError:
            raise BundleError(f"{self.path} is not a bundle: no such file") from None
        except IsADirectoryError:
            raise BundleError(f"{self.path} is not a bundle: it is a directory") from None
        except OSError as e:
            raise BundleError(f"{self.path}: cannot read the bundle ({e.strerror})") from None
        try:
            try:
                self._zf = zipfile.ZipFile(self._fp)
            except _CORRUPT as e:
                raise BundleError(f"{self.path} is not a bundle: {first_line(e)}") from None
            try:
                self._load()
            except _CORRUPT as e:
                raise BundleError(f"{self.path}: malformed bundle: {first_line(e)}") from None
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Open a bundle and read its manifest; :class:`BundleError` if it is not a bundle."""
        return cls(path)

    def __enter__(self) -> Bundle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        zf = getattr(self, "_zf", None)
        if zf is not None:
            zf.close()
        self._fp.close()

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest (a copy). Not to be trusted before :meth:`verify`."""
        return json.loads(self._manifest_bytes)  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def key_id(self) -> str | None:
        """The id of the key the bundle says signed it; None when unsigned."""
        return None if self._signature is None else self._signature[0]

    @property
    def files(self) -> tuple[str, ...]:
        """Names of the payload files, sorted."""
        return tuple(self._entries)

    def verify(self, keys: Sequence[VerifyKey], *, allow_unsigned: bool = False) -> VerifyResult:
        """Check the bundle, or raise a :class:`BundleError` saying what failed.

        In this order: the signature over the exact manifest bytes; the member list against the
        manifest; each file's size and sha256 (read once, while the container is rebuilt in
        memory, which costs about one copy of the bundle); and the file's bytes against that
        rebuilt container. A signed bundle must be signed by one of ``keys`` even with
        ``allow_unsigned``, which only admits a bundle that carries no signature at all.
        """
        self._require_open()
        self._verified = False
        try:
            key_id = self._check_signature(keys, allow_unsigned)
            self._check_members()
            self._check_contents_and_container()
        except _CORRUPT as e:
            raise BundleError(f"{self.path}: malformed bundle: {first_line(e)}") from None
        self._verified = True
        log.info("verified bundle %s: %s %s", self.path, self._name, self._version)
        return VerifyResult(
            name=self._name,
            version=self._version,
            signed=key_id is not None,
            key_id=key_id,
            files=tuple(self._entries.values()),
        )

    @property
    def info(self) -> Manifest:
        """The typed manifest. Not to be trusted before :meth:`verify`."""
        return self._info

    @property
    def verified(self) -> bool:
        """Whether :meth:`verify` passed on this open bundle."""
        return self._verified

    def read(self, name: str) -> bytes:
        """The contents of payload file ``name``, checked against its sha256 as it is read."""
        self._require_verified()
        entry = self._entry(name)
        try:
            return b"".join(self._member_chunks(entry))
        except _CORRUPT as e:
            raise BundleError(f"{self.path}: {name}: {first_line(e)}") from None

    def extract(self, dest: Path) -> dict[str, Path]:
        """Write every payload file under ``dest``; return name -> path.

        Each file is checked against its sha256 as it is written, goes to a temporary file first
        and is renamed into place only when it matches. Existing files of the same names are
        replaced; other files under ``dest`` are left alone.
        """
        self._require_verified()
        dest = Path(dest)
        out: dict[str, Path] = {}
        for entry in self._entries.values():
            target = dest.joinpath(*entry.name.split("/"))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with staged(target) as f:
                    for chunk in self._member_chunks(entry):
                        f.write(chunk)
            except OSError as e:
                raise OutputError(f"{target}: cannot write ({e.strerror or e})") from None
            out[entry.name] = target
        return out

    # -- reading ---------------------------------------------------------------------------

    def _load(self) -> None:
        infos = self._zf.infolist()
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                raise BundleError(
                    f"{self.path}: member {info.filename!r} is compressed or encrypted; "
                    "bundles store their members as they are"
                )
        self._members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self._members:
                raise BundleIntegrityError(f"{self.path}: duplicate member {info.filename!r}")
            self._members[info.filename] = info
        if MANIFEST not in self._members:
            raise BundleError(f"{self.path} is not a bundle: it has no {MANIFEST}")
        raw = self._read_small(MANIFEST, MAX_MANIFEST_BYTES)
        self._manifest_bytes = raw
        manifest = json.loads(raw.decode("utf-8"))
        if not isinstance(manifest, dict):
            raise BundleError(f"{self.path}: {MANIFEST} is not a JSON object")
        fmt = manifest.get("format")
        if fmt != BUNDLE_FORMAT:
            raise BundleError(f"{self.path} is not an edgeops bundle: its format is {fmt!r}")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise BundleError(
                f"{self.path}: bundle format version {version!r} is not supported "
                f"(this edgeops reads version {FORMAT_VERSION})"
            )
        if canonical_json(manifest) != raw:
            raise BundleError(f"{self.path}: {MANIFEST} is not in canonical form")
        self._name = _nonempty_str(manifest.get("name"), f"{self.path}: manifest name")
        self._version = _nonempty_str(manifest.get("version"), f"{self.path}: manifest version")
        self._entries = _parse_files(manifest.get("files"), self.path)
        self._info = Manifest.parse(manifest, f"{self.path}: {MANIFEST}")
        self._signature_bytes: bytes | None = None
        self._signature: tuple[str, bytes] | None = None
        if SIGNATURE in self._members:
            self._signature_bytes = self._read_small(SIGNATURE, _MAX_SIGNATURE_BYTES)
            self._signature = _parse_signature(self._signature_bytes, self.path)

    def _read_small(self, name: str, limit: int) -> bytes:
        info = self._members[name]
        if info.file_size > limit:
            raise BundleError(f"{self.path}: {name} is larger than {limit} bytes")
        try:
            with self._zf.open(info) as f:
                data = f.read(limit + 1)
        except _CORRUPT as e:
            raise BundleError(f"{self.path}: cannot read {name}: {first_line(e)}") from None
        if len(data) > limit:
            raise BundleError(f"{self.path}: {name} is larger than {limit} bytes")
        return data

    def _member_chunks(self, entry: BundleFile) -> Iterator[bytes]:
        """The member's bytes in chunks; BundleIntegrityError if they differ from ``entry``."""
        h = hashlib.sha256()
        size = 0
        try:
            with self._zf.open(self._members[entry.name]) as src:
                while chunk := src.read(_CHUNK):
                    size += len(chunk)
                    if size > entry.size:
                        break
                    h.update(chunk)
                    yield chunk
        except _CORRUPT as e:
            raise BundleIntegrityError(
                f"{self.path}: {entry.name} is damaged: {first_line(e)}"
            ) from None
        if size != entry.size:
            found = f"more than {entry.size}" if size > entry.size else str(size)
            raise BundleIntegrityError(
                f"{self.path}: {entry.name} size differs from the manifest "
                f"({found} bytes, manifest says {entry.size})"
            )
        if h.hexdigest() != entry.sha256:
            raise BundleIntegrityError(
                f"{self.path}: {entry.name} sha256 differs from the manifest"
            )

    # -- verification ----------------------------------------------------------------------

    def _check_signature(self, keys: Sequence[VerifyKey], allow_unsigned: bool) -> str | None:
        if self._signature is None:
            if allow_unsigned:
                log.warning(
                    "%s is unsigned; accepted because unsigned bundles are allowed", self.path
                )
                return None
            raise SignatureError(
                f"unsigned bundle {self.path}: refused (sign it, or allow unsigned bundles)"
            )
        key_id, signature = self._signature
        trusted = {k.key_id: k for k in keys}
        key = trusted.get(key_id)
        if key is None:
            known = ", ".join(trusted) or "none given"
            raise SignatureError(
                f"{self.path}: signed by key {key_id}, which is not a trusted key "
                f"(trusted: {known})"
            )
        if not key.verify(signature, self._manifest_bytes):
            raise SignatureError(
                f"{self.path}: the signature by key {key_id} does not match the manifest"
            )
        return key_id

    def _check_members(self) -> None:
        expected = {MANIFEST, *self._entries}
        if self._signature is not None:
            expected.add(SIGNATURE)
        for name in self._members:
            if name not in expected:
                raise BundleIntegrityError(
                    f"{self.path}: unexpected member {name!r} (not in the manifest)"
                )
        for name in self._entries:
            if name not in self._members:
                raise BundleIntegrityError(
                    f"{self.path}: {name} is listed in the manifest but missing"
                )

    def _check_contents_and_container(self) -> None:
        """Check every file against the manifest while rebuilding the container in memory."""
        manifest_bytes = self._manifest_bytes
        signature_bytes = self._signature_bytes

        def members() -> Iterator[tuple[str, int, Iterable[bytes]]]:
            yield MANIFEST, len(manifest_bytes), [manifest_bytes]
            if signature_bytes is not None:
                yield SIGNATURE, len(signature_bytes), [signature_bytes]
            for entry in self._entries.values():
                yield entry.name, entry.size, self._member_chunks(entry)

        with io.BytesIO() as rebuilt:
            _write_container(rebuilt, members())
            with rebuilt.getbuffer() as expected:
                if not self._file_equals(expected):
                    raise BundleError(
                        f"{self.path}: container is not in canonical form (rewritten or tampered)"
                    )

    def _file_equals(self, expected: memoryview) -> bool:
        self._fp.seek(0, os.SEEK_END)
        if self._fp.tell() != len(expected):
            return False
        self._fp.seek(0)
        offset = 0
        while chunk := self._fp.read(_CHUNK):
            if expected[offset : offset + len(chunk)] != chunk:
                return False
            offset += len(chunk)
        return offset == len(expected)

    def _entry(self, name: str) -> BundleFile:
        entry = self._entries.get(name)
        if entry is None:
            raise BundleError(f"{self.path}: no file {name!r} in the bundle")
        return entry

    def _require_open(self) -> None:
        if self._fp.closed:
            raise ValueError(f"{self.path}: the bundle is closed")

    def _require_verified(self) -> None:
        self._require_open()
        if not self._verified:
            raise RuntimeError(f"{self.path}: verify() the bundle before reading from it")


# -- writing -------------------------------------------------------------------------------


def _write_container(fp: IO[bytes], members: Iterable[tuple[str, int, Iterable[bytes]]]) -> None:
    """The one container writer, for new bundles and for checking existing ones.

    Every member is stored with the same fixed metadata, in the order given; ``size`` must be
    the member's size (it decides, as zipfile does, whether the member needs zip64 fields).
    """
    with zipfile.ZipFile(fp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, size, chunks in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = _ZIP_CREATE_SYSTEM
            info.external_attr = _ZIP_EXTERNAL_ATTR
            info.file_size = size
            with zf.open(info, "w") as dest:
                for chunk in chunks:
                    dest.write(chunk)


def _describe(name: str, src: bytes | Path) -> BundleFile:
    if isinstance(src, Path):
        h = hashlib.sha256()
        size = 0
        try:
            with src.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    size += len(chunk)
                    h.update(chunk)
        except OSError as e:
            raise InputDataError(f"{src}: cannot read ({e.strerror})") from None
        return BundleFile(name, size, h.hexdigest())
    if isinstance(src, bytes | bytearray | memoryview):
        data = bytes(src)
        return BundleFile(name, len(data), hashlib.sha256(data).hexdigest())
    raise TypeError(f"bundle file {name!r}: expected bytes or a Path, got {type(src).__name__}")


def _file_chunks(path: Path, entry: BundleFile) -> Iterator[bytes]:
    """A payload file's bytes, checked against what was hashed into the manifest."""
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                h.update(chunk)
                yield chunk
    except OSError as e:
        raise InputDataError(f"{path}: cannot read ({e.strerror})") from None
    if size != entry.size or h.hexdigest() != entry.sha256:
        raise InputDataError(f"{path}: changed while the bundle was being written")


def _signature_json(key: SigningKey, manifest_bytes: bytes) -> bytes:
    return canonical_json(
        {
            "algorithm": SIGNATURE_ALGORITHM,
            "key_id": key.key_id,
            "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
        }
    )


def _check_caller_manifest(manifest: Mapping[str, Any]) -> None:
    reserved = [k for k in RESERVED_KEYS if k in manifest]
    if reserved:
        raise UsageError(
            f"manifest must not set {', '.join(reserved)}: write_bundle sets them itself"
        )
    for field in ("name", "version"):
        value = manifest.get(field)
        if not isinstance(value, str) or not value:
            raise UsageError(f"manifest {field} must be a non-empty string, got {value!r}")


# -- names and records ---------------------------------------------------------------------


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a payload file, or None when it can."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a non-empty string"
    if name in (MANIFEST, SIGNATURE):
        return f"{name!r} is reserved for the bundle's own records"
    if name.startswith("/") or "\\" in name or "\0" in name:
        return f"{name!r} must be a relative POSIX path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return f"{name!r} must not have empty, '.' or '..' parts"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name!r} is not valid UTF-8"
    return None


def _names_problem(names: Iterable[object]) -> str | None:
    """Why these names cannot name payload files (a bad name, or a file that is also a dir)."""
    valid: set[str] = set()
    for name in names:
        problem = _name_problem(name)
        if problem:
            return problem
        assert isinstance(name, str)
        valid.add(name)
    for name in valid:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in valid:
                return f"{parent!r} is a file and also a directory of {name!r}"
    return None


def _nonempty_str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _parse_files(files: object, path: Path) -> dict[str, BundleFile]:
    if not isinstance(files, dict):
        raise BundleError(f"{path}: manifest files must be an object")
    problem = _names_problem(files)
    if problem:
        raise BundleError(f"{path}: manifest files: {problem}")
    entries: dict[str, BundleFile] = {}
    for name in sorted(files):
        record = files[name]
        if not isinstance(record, dict) or set(record) != {"sha256", "size"}:
            raise BundleError(f"{path}: manifest entry for {name} must have sha256 and size")
        sha, size = record["sha256"], record["size"]
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            raise BundleError(f"{path}: manifest sha256 of {name} is not 64 lowercase hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"{path}: manifest size of {name} is not a byte count")
        entries[name] = BundleFile(name, size, sha)
    return entries


def _parse_signature(raw: bytes, path: Path) -> tuple[str, bytes]:
    """(key id, signature) from ``signature.json``; SignatureError if it is malformed."""

    def bad(why: str) -> SignatureError:
        return SignatureError(f"{path}: {SIGNATURE} is malformed: {why}")

    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise bad(first_line(e)) from None
    if not isinstance(record, dict) or set(record) != {"algorithm", "key_id", "signature"}:
        raise bad("expected exactly algorithm, key_id and signature")
    if record["algorithm"] != SIGNATURE_ALGORITHM:
        raise bad(f"algorithm {record['algorithm']!r} is not {SIGNATURE_ALGORITHM}")
    key_id, text = record["key_id"], record["signature"]
    if not isinstance(key_id, str) or not _KEY_ID_HEX.fullmatch(key_id):
        raise bad("key_id is not 16 lowercase hex digits")
    if not isinstance(text, str):
        raise bad("signature is not a string")
    try:
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(f"signature is not base64 ({first_line(e)})") from None
    # One spelling only: base64 has spare bits, and JSON has escapes and key orders.
    if len(signature) != 64 or base64.b64encode(signature).decode("ascii") != text:
        raise bad("signature is not 64 bytes in canonical base64")
    if canonical_json(record) != raw:
        raise bad("not in canonical form")
    return key_id, signature

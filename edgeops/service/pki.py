"""A small certificate authority for a fleet: the CA, the broker's server certificate, and client
certificates whose common name is a device id or a service account (the broker's mTLS listener
takes that name as the user name). EC P-256 keys (fast to make; OpenSSL and mosquitto take them),
written as PEM, private keys 0600.

``edgeops pki ca`` and ``edgeops pki issue`` are the command line over it; the tests and the demo
make throwaway ones with it too.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.core.errors import KeyFileError, UsageError


@dataclass(frozen=True)
class Issued:
    """A certificate and its key."""

    cert: Path
    key: Path


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def _write_cert(path: Path, cert: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _usage(*, ca: bool) -> Any:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(directory: Path, name: str = "edgeops fleet CA", *, days: int = 3650) -> Issued:
    """A new CA in ``directory`` (``ca.crt``, ``ca.key``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(_write_cert(directory / "ca.crt", cert), _write_key(directory / "ca.key", key))


def issue(
    ca: Issued,
    out: Path,
    name: str,
    *,
    server_hosts: tuple[str, ...] = (),
    days: int = 825,
) -> Issued:
    """A certificate for ``name`` signed by ``ca``, written as ``out/NAME.crt`` and
    ``out/NAME.key``: a server certificate for ``server_hosts`` (DNS names or IP addresses)
    when given, else a client certificate whose common name is ``name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"certificate name {name!r}: use a device id or a host name")
    ca_cert, ca_key = load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server_hosts:
        alt: list[x509.GeneralName] = []
        for h in server_hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(_write_cert(out / f"{name}.crt", cert), _write_key(out / f"{name}.key", key))


def load_ca(ca: Issued) -> tuple[Any, Any]:
    """The CA's certificate and private key; :class:`KeyFileError` when they cannot be read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except OSError as e:
        raise KeyFileError(f"CA: cannot read {e.filename} ({e.strerror})") from None
    except ValueError as e:
        raise KeyFileError(f"CA {ca.cert}: not a PEM certificate and key ({e})") from None
    return cert, key


def ca_in(directory: Path) -> Issued:
    """The CA that :func:`make_ca` wrote into ``directory``."""
    return Issued(directory / "ca.crt", directory / "ca.key")

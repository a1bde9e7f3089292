"""A throwaway CA for tests: a server certificate valid for ``localhost`` and the loopback
addresses, and a client certificate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestPki:
    """The PEM files of a throwaway PKI made by :func:`make_test_pki` (keys unencrypted)."""

    __test__ = False  # not a pytest test class, whatever its name says

    ca: Path
    """The CA certificate: the ``ca`` both sides trust."""
    server_cert: Path
    """Signed by the CA for ``127.0.0.1``, ``::1`` and ``localhost``."""
    server_key: Path
    client_cert: Path
    """Signed by the CA for client authentication."""
    client_key: Path


def make_test_pki(
    directory: Path, *, client_name: str = "edgeops-test-client", days: int = 2
) -> TestPki:
    """Write a new CA, a server certificate and a client certificate to ``directory``
    (:mod:`edgeops.service.pki`).

    Each call makes a different CA, so a broker given one :class:`TestPki` is not trusted by a
    client given another's ``ca``.
    """
    from edgeops.service import pki

    ca = pki.make_ca(directory, f"edgeops test CA {os.urandom(4).hex()}", days=days)
    server = pki.issue(ca, directory, "localhost", server_hosts=SERVER_HOSTS, days=days)
    client = pki.issue(ca, directory, client_name, days=days)
    return TestPki(ca.cert, server.cert, server.key, client.cert, client.key)


SERVER_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a test broker's certificate is valid for."""

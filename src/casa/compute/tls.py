"""TLS between a cluster's scheduler, workers and client, for the batch-system backends.

A per-cluster certificate that is its own CA (:func:`write_cluster_certificate`), or the
site's files (``[htcondor] tls_*``); the Dask ``Security`` of each side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from casa.filesystem import write_file

if TYPE_CHECKING:
    from distributed.security import Security


@dataclass(frozen=True)
class TLSFiles:
    """The CA, certificate and key shared by a cluster's scheduler, workers and client."""

    ca: Path
    cert: Path
    key: Path

    def security(self) -> Security:
        """The scheduler's and the client's ``Security`` (files on this machine)."""
        from distributed.security import Security

        ca, cert, key = str(self.ca), str(self.cert), str(self.key)
        return Security(
            tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_client_cert=cert, tls_client_key=key, tls_worker_cert=cert,
            tls_worker_key=key, require_encryption=True,
        )  # fmt: skip

    def in_job(self, scratch: str) -> Security:
        """The workers' ``Security``: the same files, sent with each job into ``scratch``."""
        from distributed.security import Security

        ca, cert, key = (f"{scratch}/{p.name}" for p in (self.ca, self.cert, self.key))
        return Security(
            tls_ca_file=ca, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True
        )


def write_cluster_certificate(directory: Path, days: int = 30) -> TLSFiles:
    """A self-signed certificate (its own CA) and its key, for one cluster; key mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from casa.auth.certificates import certificate, private_key_pem

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "casa-cluster")])
    cert = certificate(
        name, key.public_key(), name, key, days,
        [(x509.BasicConstraints(ca=True, path_length=None), True),
         (x509.SubjectAlternativeName([x509.DNSName("dask-internal")]), False)],
    )  # fmt: skip
    files = TLSFiles(directory / "ca.pem", directory / "cluster.pem", directory / "cluster.key")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = private_key_pem(key)
    for path, data, mode in [(files.ca, pem, 0o644), (files.cert, pem, 0o644),
                             (files.key, key_pem, 0o600)]:  # fmt: skip
        write_file(path, data, mode)
    return files

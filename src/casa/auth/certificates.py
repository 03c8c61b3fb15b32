"""The facility's TLS certificates for its XRootD servers, and where clients find its CA.

XRootD's ``ztn`` protocol, by which every standard client (uproot, coffea, ``xrdcp``, ROOT)
presents the WLCG bearer token it finds itself, requires TLS: the origin and the cache each
hold a host certificate, signed by a CA of the facility's own (:func:`ensure_ca`), and clients
must trust that CA. They look for CAs in ``$X509_CERT_DIR``, else in
``/etc/grid-security/certificates`` (:data:`GRID_CERTIFICATES`), where each CA is a file
named after OpenSSL's hash of its subject (``HASH.0``). :func:`install_ca` puts the
facility's CA into such a folder, as a link to the facility's copy.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from casa.errors import ServiceError
from casa.filesystem import create_once, write_file

#: Where XRootD's and OpenSSL's clients look for CA certificates when ``$X509_CERT_DIR`` is unset.
GRID_CERTIFICATES = Path("/etc/grid-security/certificates")
#: The facility's CA certificate inside a certificates folder of casa's (linked to from others).
CA_FILE = "casa-ca.pem"
CA_DAYS = 3650
HOST_DAYS = 365


def private_key_pem(key) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (files holding it are 0600)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(subject, public_key, issuer, signing_key, days: int, extensions: list):
    """An X.509 certificate for ``subject`` signed by ``issuer``'s key, valid from five minutes
    ago (clocks differ) for ``days``; ``extensions`` are ``(extension, critical)`` pairs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


@dataclass(frozen=True)
class FacilityCA:
    """The facility's CA: its key (private, 0600) and its certificate (public)."""

    key: Path
    cert: Path

    def issue(self, names: list[str], cert: Path, key: Path, owner: tuple[int, int] | None) -> None:
        """A host certificate for ``names`` (host names and IP addresses) and its key, both
        mode 0600 and owned by ``owner`` (the daemon's account)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        host_key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        built = certificate(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]),
            host_key.public_key(), ca_cert.subject, ca_key, HOST_DAYS,
            [(x509.BasicConstraints(ca=False, path_length=None), True),
             (x509.SubjectAlternativeName(_alt_names(names)), False),
             (x509.ExtendedKeyUsage(usage), False)],
        )  # fmt: skip
        write_file(key, private_key_pem(host_key), mode=0o600, owner=owner)
        write_file(cert, built.public_bytes(serialization.Encoding.PEM), mode=0o600, owner=owner)


def ensure_ca(keys_dir: Path, facility_name: str) -> FacilityCA:
    """The facility's CA, made once in ``keys_dir`` (key 0600).

    Its subject carries a random part, so that the CAs of two facilities on one machine never
    share a subject hash in a certificates folder.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = FacilityCA(keys_dir / "tls-ca.key", keys_dir / "tls-ca.pem")
    if not ca.key.exists():
        create_once(ca.key, private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    if not ca.cert.exists():
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "casa"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{facility_name} CA {secrets.token_hex(4)}"),
        ])  # fmt: skip
        signs_only = x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = certificate(
            name, key.public_key(), name, key, CA_DAYS,
            [(x509.BasicConstraints(ca=True, path_length=0), True), (signs_only, True)],
        )  # fmt: skip
        create_once(ca.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return ca


def publish_ca(ca_cert: Path, folder: Path) -> Path:
    """``folder`` as a certificates folder holding the facility's CA certificate ``ca_cert``
    (readable by every account: it is what their clients verify the servers with)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    copy = folder / CA_FILE
    if not copy.exists() or copy.read_bytes() != ca_cert.read_bytes():
        write_file(copy, ca_cert.read_bytes(), mode=0o644)
    _link_by_hash(copy, folder)
    return folder


def install_ca(published: Path, folder: Path = GRID_CERTIFICATES) -> Path:
    """Link the facility's CA (``published / CA_FILE``) into a system certificates folder,
    removing links an earlier facility of casa left dangling there; returns the link."""
    for made in [*reversed(folder.parents), folder]:
        if not made.exists():  # every account's clients read it, whatever casa's umask
            made.mkdir(mode=0o755)
            os.chmod(made, 0o755)
    for entry in folder.iterdir():
        if entry.is_symlink() and not entry.exists() and os.readlink(entry).endswith(CA_FILE):
            entry.unlink()
    return _link_by_hash(published / CA_FILE, folder)


def trust_facility_ca(published: Path, env: dict | None = None) -> None:
    """Make this process's XRootD clients trust the facility's CA (``published``, a folder
    made by :func:`publish_ca`): ``$X509_CERT_DIR`` is set to it when casa could not install
    the CA where clients look by default (casa not root) and the caller set no folder."""
    env = os.environ if env is None else env
    try:
        found = (published / CA_FILE).exists()
    except PermissionError:  # a folder this account may not enter: not its facility
        found = False
    if env.get("X509_CERT_DIR") or not found:
        return
    if os.geteuid() != 0:
        env["X509_CERT_DIR"] = str(published)


def _link_by_hash(cert: Path, folder: Path) -> Path:
    """``folder/HASH.N`` linking to ``cert``, as OpenSSL's ``openssl rehash`` would name it."""
    digest = subject_hash(cert)
    for n in range(10):
        link = folder / f"{digest}.{n}"
        if link.is_symlink() and Path(os.readlink(link)) == cert:
            return link
        if not link.exists() and not link.is_symlink():
            link.symlink_to(cert)
            return link
    raise ServiceError(f"{folder} has ten certificates named {digest}.N already: remove stale ones")


def subject_hash(cert: Path) -> str:
    """OpenSSL's hash of a certificate's subject, by which CA folders name their files."""
    try:
        done = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(cert)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except FileNotFoundError:
        raise ServiceError(
            "the openssl program is not installed (apt-get install openssl): casa needs it to "
            "name the facility's CA certificate the way XRootD's clients look it up"
        ) from None
    except subprocess.CalledProcessError as e:
        raise ServiceError(f"openssl cannot read {cert}: {e.stderr.strip()}") from None
    return done.stdout.strip()


def _alt_names(names: list[str]) -> list:
    """Each name as a DNS name, and each address also as an IP address: XRootD's client
    (5.5) matches the host of a URL without a reverse name, ``root://10.0.0.5``, against the
    DNS names only."""
    from cryptography import x509

    alt: list = []
    for name in names:
        alt.append(x509.DNSName(name))
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            pass
    return alt

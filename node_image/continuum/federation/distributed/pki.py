"""A small certificate authority for the cluster (pure crypto, no I/O but files).

Creates the cluster CA, node certificates (serverAuth + clientAuth, DNS and IP
SANs, the node role URI) and client certificates for people and the operator
(clientAuth only, one API role URI: read, write or admin). Keys are ECDSA P-256:
small and quick to handshake. Files are written the way cert-manager writes a
Secret: ``tls.crt``, ``tls.key``, ``ca.crt``. Names are checked before anything
is signed: no name may look like a role URI, so no certificate can borrow a role
(the profiles are in docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .transport import tls
from .transport.tls import NODE_ID, check_node_name  # noqa: F401 (part of the CA's API)

DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 365

# A client's name goes into the common name only, for logs; never a URI, never a role.
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")


def check_client_name(name: str) -> str:
    if not CLIENT_NAME.match(name):
        raise ValueError(f"client name {name!r} must be 1-64 letters, digits or ._@- starting "
                         "with a letter or digit (it is only the common name: roles are "
                         "given with --role, never through a name)")
    return name


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("CA key is not an EC key")
        return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "continuum-federation-ca", days: int = DEFAULT_CA_DAYS,
              not_before: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA valid until ``days`` from now, or from ``not_before`` when given."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    start = not_before or (now - dt.timedelta(minutes=5))
    end = (not_before or now) + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    dns_names: list[str] | tuple[str, ...] = (),
    ip_addresses: list[str] | tuple[str, ...] = (),
    uris: list[str] | tuple[str, ...] = (),
    days: int = DEFAULT_CERT_DAYS,
    server: bool = True,
    not_before: dt.datetime | None = None,
) -> KeyPair:
    """Issue a leaf certificate signed by ``ca``."""
    if days <= 0 and not_before is None:
        raise ValueError("days must be positive")
    ca_cert = ca.certificate
    ca_key = ca.private_key()
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_node(
    ca: KeyPair,
    node_id: str,
    *,
    dns_names: list[str] | tuple[str, ...] = (),
    ip_addresses: list[str] | tuple[str, ...] = (),
    days: int = DEFAULT_CERT_DAYS,
) -> KeyPair:
    """A node certificate: speaks for ``node_id`` (and extra names) as a cluster member.
    ``ValueError`` for a name that is not a DNS name (a role URI, a wildcard, ...)."""
    check_node_name(node_id)
    for extra in dns_names:
        check_node_name(extra, "DNS name")
    names = [node_id, *[d for d in dns_names if d != node_id]]
    return issue(ca, node_id, dns_names=names, ip_addresses=ip_addresses,
                 uris=[tls.NODE_ROLE_URI], days=days, server=True)


def issue_client(ca: KeyPair, name: str, *, role: str, days: int = DEFAULT_CERT_DAYS
                 ) -> KeyPair:
    """A client certificate with one API ``role`` (read, write or admin): may call the API
    as far as its role allows, never speak as a node."""
    check_client_name(name)
    if role not in tls.API_ROLES:
        raise ValueError(f"role must be one of {', '.join(tls.API_ROLES)}, not {role!r}")
    return issue(ca, name, uris=[tls.role_uri(role)], days=days, server=False)


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_secret_dir(directory: str | os.PathLike[str], pair: KeyPair, ca_cert_pem: bytes) -> Path:
    """Write ``tls.crt``, ``tls.key`` (mode 0600) and ``ca.crt``, like a cert-manager Secret."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "tls.crt", pair.cert_pem, private=False)
    _write(d / "tls.key", pair.key_pem, private=True)
    _write(d / "ca.crt", ca_cert_pem, private=False)
    return d


def load_ca(directory: str | os.PathLike[str]) -> KeyPair:
    d = Path(directory)
    return KeyPair((d / "ca.crt").read_bytes(), (d / "ca.key").read_bytes())


def init_ca(directory: str | os.PathLike[str], common_name: str = "continuum-federation-ca",
            days: int = DEFAULT_CA_DAYS,
            ) -> KeyPair:
    """Create ``ca.crt`` and ``ca.key`` in ``directory`` unless they exist; return the CA."""
    d = Path(directory)
    if (d / "ca.crt").exists() and (d / "ca.key").exists():
        return load_ca(d)
    d.mkdir(parents=True, exist_ok=True)
    ca = create_ca(common_name, days)
    _write(d / "ca.key", ca.key_pem, private=True)
    _write(d / "ca.crt", ca.cert_pem, private=False)
    return ca


def not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc

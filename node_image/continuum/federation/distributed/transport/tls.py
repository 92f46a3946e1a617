"""Mutual TLS 1.3 contexts, certificate identities, and hot reload.

Files follow cert-manager's Secret layout (``tls.crt``, ``tls.key``,
``ca.crt``), so the same loader serves Kubernetes and the local cluster.

Identity: a certificate speaks for the names in its subjectAltName (DNS and
URI entries) and its common name. A wildcard DNS name ``*.peers.ns.svc``
speaks for ``<label>.peers.ns.svc``; with ``peer_domain`` set, a bare node id
``demo-0`` is checked as ``demo-0.<peer_domain>``. A per-node certificate thus
binds every message to the node that sent it; one wildcard certificate per
cluster (issued once, never re-issued on scaling, as on Kubernetes) binds it only
to the cluster, since every pod holds the same key and may claim any label.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a node reads its certificates with the standard library alone
    from cryptography import x509


class TLSConfigError(ValueError):
    """TLS material missing, unreadable or inconsistent."""


# Every peer connection is mutual TLS 1.3; errors about missing material end with this.
WHAT_TO_PASS = (
    "Pass tls_cert (this node's certificate: its node id as a DNS name, plus the URI SAN "
    "urn:continuum:role:node), tls_key (its private key) and tls_ca (the cluster CA's "
    "certificate, which every peer's certificate must chain to). "
    "`continuum-federation certs init --dir CA` then `certs node --dir CA --id <node id> "
    "--out DIR` make them as DIR/tls.crt, DIR/tls.key and DIR/ca.crt.")

# A peer refused for its certificate hears what a node certificate needs.
NODE_CERT_NEEDS = ("a node certificate carries the node id as a DNS name or CN and the URI "
                   "SAN urn:continuum:role:node (`continuum-federation certs node` makes one)")


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: str
    key: str
    ca: str

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> TLSFiles:
        d = Path(directory)
        return cls(cert=str(d / "tls.crt"), key=str(d / "tls.key"), ca=str(d / "ca.crt"))

    @classmethod
    def optional(cls, cert: str | None, key: str | None, ca: str | None) -> TLSFiles | None:
        """The spec's ``tls_cert/tls_key/tls_ca`` arguments: all or none."""
        given = [x for x in (cert, key, ca) if x]
        if not given:
            return None
        if len(given) != 3:
            missing = [n for n, x in (("tls_cert", cert), ("tls_key", key), ("tls_ca", ca))
                       if not x]
            raise TLSConfigError(
                f"mutual TLS needs tls_cert, tls_key and tls_ca together; missing "
                f"{', '.join(missing)}. {WHAT_TO_PASS}")
        assert cert and key and ca
        return cls(cert, key, ca)

    def check(self) -> None:
        for label, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not Path(path).is_file():
                raise TLSConfigError(f"TLS {label} file not found: {path}")

    def mtime(self) -> tuple[float, float, float]:
        return tuple(Path(p).stat().st_mtime for p in (self.cert, self.key, self.ca))  # type: ignore[return-value]


def _base(purpose: ssl.Purpose, files: TLSFiles) -> ssl.SSLContext:
    files.check()
    ctx = ssl.create_default_context(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)
    except (ssl.SSLError, OSError) as exc:
        kind = exc.__class__.__name__
        raise TLSConfigError(f"cannot load TLS material ({kind}: {exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate signed by the cluster CA is required."""
    return _base(ssl.Purpose.CLIENT_AUTH, files)


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS 1.3 only; presents our certificate and verifies the server's chain.

    Hostnames are not checked by the TLS layer because peers are dialled by
    IP, pod DNS name or SRV target alike; the transport instead checks that
    the identity in the server's certificate matches the node it meant to
    reach (see ``PeerTransport``).
    """
    ctx = _base(ssl.Purpose.SERVER_AUTH, files)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reload_contexts(files: TLSFiles, contexts: Iterable[ssl.SSLContext]) -> None:
    """Load rotated files into live contexts; new handshakes use them.

    ``ca.crt`` may hold several CAs (a CA rotation publishes old and new together); each
    is trusted. OpenSSL only ever adds to a live context's trust store, so a CA dropped
    from the file stays trusted until the process restarts.
    """
    files.check()
    for ctx in contexts:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER encoding."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----",
                       re.DOTALL)


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER bytes of each certificate in a PEM bundle, in file order."""
    try:
        ders = [base64.b64decode(b"".join(m.group(1).split()), validate=True)
                for m in _PEM_CERT.finditer(pem)]
    except binascii.Error as exc:
        raise TLSConfigError(f"not a PEM certificate bundle: {exc}") from None
    if not ders:
        raise TLSConfigError("no certificate in the PEM data")
    return ders


def pem_fingerprints(pem: bytes) -> list[str]:
    """The fingerprint (hex SHA-256 of the DER encoding) of each certificate in a PEM
    bundle, in file order."""
    return [hashlib.sha256(der).hexdigest() for der in pem_certificates(pem)]


def not_after(pem: bytes) -> dt.datetime:
    """When the first certificate of ``pem`` expires (read from its DER encoding: a node
    needs no X.509 library for it). ``TLSConfigError`` if that is not where it should be."""
    der = pem_certificates(pem)[0]
    try:
        tbs, _ = _der_inside(der, 0)  # Certificate -> TBSCertificate
        pos, _ = _der_inside(der, tbs)
        if der[pos] == 0xA0:  # [0] version
            pos = _der_skip(der, pos)
        for _ in range(3):  # serialNumber, signature, issuer
            pos = _der_skip(der, pos)
        validity, _ = _der_inside(der, pos)
        after = _der_skip(der, validity)  # past notBefore
        tag = der[after]
        start, stop = _der_inside(der, after)
        text = der[start:stop].decode("ascii")
    except (IndexError, UnicodeDecodeError) as exc:
        raise TLSConfigError(f"malformed certificate: {exc}") from None
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        raise TLSConfigError(f"malformed certificate: validity time of tag {tag:#x}")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _der_inside(der: bytes, pos: int) -> tuple[int, int]:
    """Where the content of the DER element at ``pos`` starts and ends."""
    length = der[pos + 1]
    start = pos + 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[start:start + n], "big")
        start += n
    if start + length > len(der):
        raise IndexError("element runs past the end")
    return start, start + length


def _der_skip(der: bytes, pos: int) -> int:
    return _der_inside(der, pos)[1]


def file_fingerprints(path: str | os.PathLike[str]) -> list[str]:
    """``pem_fingerprints`` of a file such as ``ca.crt`` (or ``tls.crt``: leaf first)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {path}: {exc}") from None
    return pem_fingerprints(data)


def identities_from_peercert(peercert: dict[str, Any] | None) -> frozenset[str]:
    """Names a verified peer certificate (``SSLObject.getpeercert()``) speaks for."""
    if not peercert:
        return frozenset()
    names: set[str] = set()
    for kind, value in peercert.get("subjectAltName", ()):
        if kind in ("DNS", "URI"):
            names.add(str(value).lower())
        elif kind == "IP Address":
            names.add(str(ipaddress.ip_address(str(value).strip())))
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value).lower())
    return frozenset(names)


def authorizes(identities: frozenset[str], sender: str, peer_domain: str | None = None) -> bool:
    """Whether a certificate with ``identities`` may speak as node ``sender``."""
    sender = sender.lower()
    candidates = {sender}
    if peer_domain:
        candidates.add(f"{sender}.{peer_domain.lower().strip('.')}")
    for name in candidates:
        if name in identities:
            return True
        label, _, rest = name.partition(".")
        if rest and label and f"*.{rest}" in identities:
            return True
    return False


NODE_ROLE_URI = "urn:continuum:role:node"
CLIENT_ROLE_URI_PREFIX = "urn:continuum:role:client:"


def is_node(identities: frozenset[str]) -> bool:
    """Node certificates carry ``NODE_ROLE_URI``; only they may speak the peer protocol."""
    return NODE_ROLE_URI in identities

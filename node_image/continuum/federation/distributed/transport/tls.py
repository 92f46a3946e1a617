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

import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


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
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def pem_fingerprints(pem: bytes) -> list[str]:
    """The fingerprint of each certificate in a PEM bundle, in file order."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TLSConfigError(f"not a PEM certificate bundle: {exc}") from None
    if not certs:
        raise TLSConfigError("no certificate in the PEM data")
    return [fingerprint(c) for c in certs]


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

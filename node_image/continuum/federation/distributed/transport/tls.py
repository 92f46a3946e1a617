"""Mutual TLS 1.3 contexts, certificate identities and roles, and hot reload.

Files follow cert-manager's Secret layout (``tls.crt``, ``tls.key``,
``ca.crt``), so the same loader serves Kubernetes and the local cluster.

Identity: a certificate speaks for the names in its subjectAltName, and only
those: DNS names say which node it is, URIs which roles it holds (the common
name never counts, so no certificate can borrow a role or a node's name through
it). A node certificate carries the node role URI and its node id as a DNS name
(with ``peer_domain`` set, ``demo-0`` is also found as ``demo-0.<peer_domain>``).
A client certificate carries one API role (read, write or admin). A wildcard
``*.<peer_domain>`` speaks for every node of the domain only when the caller
opts in (``wildcard=True``): every pod then holds the same key, so a message is
bound to the cluster, not to its sender (see docs/security.md).
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
import weakref
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
NODE_CERT_NEEDS = ("a node certificate carries the node id as a DNS name and the URI SAN "
                   "urn:continuum:role:node (`continuum-federation certs node` makes one)")


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


NODE_ROLE_URI = "urn:continuum:role:node"
ROLE_URI_PREFIX = "urn:continuum:role:"
# The API roles, each granting what the ones before it grant.
API_ROLES = ("read", "write", "admin")


def role_uri(role: str) -> str:
    """The URI SAN that carries ``role`` (``node`` or one of ``API_ROLES``)."""
    if role != "node" and role not in API_ROLES:
        raise ValueError(f"unknown role {role!r}: one of node, {', '.join(API_ROLES)}")
    return f"{ROLE_URI_PREFIX}{role}"


_ROLE_URIS_HIGHEST_FIRST = tuple((r, role_uri(r)) for r in reversed(API_ROLES))


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified certificate speaks for: its subjectAltName entries, nothing else."""

    dns: frozenset[str] = frozenset()
    uris: frozenset[str] = frozenset()
    ips: frozenset[str] = frozenset()
    fingerprint: str | None = None  # hex SHA-256 of the DER, when the certificate was at hand

    @property
    def api_role(self) -> str | None:
        """The highest API role the certificate holds (None: it may not call the API)."""
        for role, uri in _ROLE_URIS_HIGHEST_FIRST:  # asked on every API request
            if uri in self.uris:
                return role
        return None

    def describe(self) -> str:
        """A short description for errors and logs (names only, never key material)."""
        names = sorted(self.dns) or sorted(self.ips) or ["no DNS name"]
        roles = sorted(u.removeprefix(ROLE_URI_PREFIX) for u in self.uris
                       if u.startswith(ROLE_URI_PREFIX)) or ["no role"]
        return f"{', '.join(names[:3])} ({', '.join(roles)})"


def identity_from_peercert(peercert: dict[str, Any] | None,
                           der: bytes | None = None) -> Identity:
    """The identity of a verified peer certificate (``SSLObject.getpeercert()``); with its
    DER form (``getpeercert(binary_form=True)``) the fingerprint too."""
    if not peercert:
        return Identity()
    dns: set[str] = set()
    uris: set[str] = set()
    ips: set[str] = set()
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.add(str(value).lower())
        elif kind == "URI":
            uris.add(str(value))
        elif kind == "IP Address":
            ips.add(str(ipaddress.ip_address(str(value).strip())))
    fp = hashlib.sha256(der).hexdigest() if der else None
    return Identity(frozenset(dns), frozenset(uris), frozenset(ips), fp)


# A connection's peer certificate never changes (TLS 1.3 has no renegotiation): its identity
# is worked out once per connection, not once per request on it.
_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Identity] = weakref.WeakKeyDictionary()


def identity_of(ssl_object: Any) -> Identity | None:
    """The identity of the peer of a TLS connection (``ssl.SSLObject`` or ``SSLSocket``);
    None when there is no verified peer certificate."""
    if ssl_object is None:
        return None
    known = _BY_CONNECTION.get(ssl_object)
    if known is not None:
        return known
    peercert = ssl_object.getpeercert()
    if not peercert:
        return None
    identity = identity_from_peercert(peercert, ssl_object.getpeercert(binary_form=True))
    _BY_CONNECTION[ssl_object] = identity
    return identity


def identity_of_file(path: str | os.PathLike[str]) -> Identity:
    """The identity the first certificate of a PEM file gives, read with the standard
    library (the decoder behind ``getpeercert()``): a node needs no X.509 library to check
    its own certificate before serving with it."""
    try:
        pem = Path(path).read_bytes()
        der = pem_certificates(pem)[0]
        decoded = ssl._ssl._test_decode_cert(os.fspath(path))  # type: ignore[attr-defined]
    except (OSError, ValueError) as exc:  # TLSConfigError is a ValueError; ssl.SSLError an OSError
        raise TLSConfigError(f"cannot read the certificate {path}: {exc}") from None
    return identity_from_peercert(decoded, der)


def identity_of_certificate(cert: x509.Certificate) -> Identity:
    """The identity a parsed certificate gives (for tools that hold the X.509 library)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Identity(fingerprint=fingerprint(cert))
    return Identity(frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName)),
                    frozenset(san.get_values_for_type(x509.UniformResourceIdentifier)),
                    frozenset(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
                    fingerprint(cert))


def authorizes(identity: Identity, sender: str, peer_domain: str | None = None, *,
               wildcard: bool = False) -> bool:
    """Whether a certificate with ``identity`` may speak as node ``sender``: a DNS name of
    it is ``sender`` (or ``sender.<peer_domain>``). A wildcard ``*.<peer_domain>`` counts
    only with ``wildcard=True``, and only for a one-label ``sender``; no other wildcard
    ever does (``*.local`` is not ``anything.local``)."""
    sender = sender.lower()
    if sender in identity.dns:
        return True
    if not peer_domain:
        return False
    domain = peer_domain.lower().strip(".")
    if f"{sender}.{domain}" in identity.dns:
        return True
    return wildcard and "." not in sender and f"*.{domain}" in identity.dns


def is_node(identity: Identity) -> bool:
    """Node certificates carry ``NODE_ROLE_URI``; only they may speak the peer protocol."""
    return NODE_ROLE_URI in identity.uris


def check_own_node_certificate(files: TLSFiles, node_id: str, peer_domain: str | None = None,
                               *, wildcard: bool = False) -> Identity:
    """Refuse to serve with a certificate peers would refuse: ``TLSConfigError`` saying
    what is missing and how to make a proper one."""
    files.check()
    identity = identity_of_file(files.cert)
    make = (f"make one with `continuum-federation certs node --dir <CA dir> --id {node_id} "
            "--out <dir>` (or see docs/security.md for the node certificate profile)")
    if not is_node(identity):
        raise TLSConfigError(
            f"the certificate {files.cert} lacks the node role (URI SAN {NODE_ROLE_URI}), so "
            f"every peer would refuse this node: {make}")
    if not authorizes(identity, node_id, peer_domain, wildcard=wildcard):
        domain = f" or {node_id}.{peer_domain}" if peer_domain else ""
        if any(name.startswith("*.") for name in identity.dns) and not wildcard:
            make += ("; a shared wildcard certificate counts only with peer_domain set and "
                     "wildcard_certificates: true")
        raise TLSConfigError(
            f"the certificate {files.cert} does not name this node ({node_id}{domain} as a "
            f"DNS SAN; it names {identity.describe()}): {make}")
    return identity


# A node id is a DNS label or name (it is the certificate's DNS SAN); \Z, not $: "$"
# also matches before a final newline.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*)*\Z")


def check_node_name(name: str, what: str = "node id") -> str:
    """``name`` if it may be a node certificate's DNS SAN; ``ValueError`` saying why not."""
    if len(name) > 253 or not NODE_ID.match(name):
        raise ValueError(f"{what} {name!r} is not a DNS name (letters, digits, '-' and '.' "
                         "between labels): it becomes the certificate's DNS SAN")
    return name

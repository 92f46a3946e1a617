"""The operator-managed CA (tls.mode SelfSigned): which Secrets to (re)issue, and their contents.

Pure apart from key generation: the current time and what the nodes report are passed in,
and the cluster's Secrets are given as decoded dicts. Secrets use cert-manager's layout
(``tls.crt``, ``tls.key``, ``ca.crt``), so nodes read both modes the same way. Leaves are
renewed ``renewBefore`` ahead of expiry; the node certificate carries one wildcard DNS
name, so scaling never re-issues it.

The CA is rotated when a third of its life is left, in two phases, because a pod sees a
changed Secret only after the kubelet's next sync (up to a minute or more) and a node
rejects a peer whose certificate comes from a CA it does not trust yet:

1. ``PublishingBundle``: a new CA is made and stored beside the signing one in the CA
   Secret (``next.crt``/``next.key``); every ``ca.crt`` carries both while leaves stay
   signed by the old CA. Nothing else happens until every ready node reports (in
   ``/v1/status`` ``trusted_ca_sha256``) that it has loaded the new CA.
2. ``ReissuingLeaves``: the new CA becomes the signing one and the leaves are re-issued
   from it, with both CAs still in ``ca.crt``. Once every ready node serves the new node
   certificate (``certificate_sha256``), the old CA is dropped from every ``ca.crt``.

The phase is read from the CA Secret on every cycle (written before the leaves, in the
same write as the key material), so a restarted operator resumes where it was; the
reconciler mirrors it into ``status.certificates.rotation``.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls as node_tls

from . import manifests
from . import spec as api

NOT_AFTER = f"{api.PREFIX}/not-after"
CA_DAYS = 3650
NEXT_CRT = "next.crt"
NEXT_KEY = "next.key"

Data = Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class NodeReport:
    """What one pod's node says about its loaded TLS files (None: no answer or no field)."""

    pod: str
    ready: bool
    trusted_ca: frozenset[str] | None = None
    serving: str | None = None

    @classmethod
    def from_status(cls, pod: str, ready: bool, status: Mapping[str, Any] | None) -> NodeReport:
        st = status or {}
        trusted = st.get("trusted_ca_sha256")
        serving = st.get("certificate_sha256")
        return cls(pod, ready,
                   frozenset(str(t) for t in trusted) if isinstance(trusted, list) else None,
                   serving if isinstance(serving, str) else None)


@dataclass(frozen=True, slots=True)
class Plan:
    secrets: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    rotation: api.CARotation | None = None


def decode(secret: Mapping[str, Any] | None) -> dict[str, bytes] | None:
    if not secret or not secret.get("data"):
        return None
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def _cert(data: Data | None, key: str = "tls.crt") -> x509.Certificate | None:
    if not data or key not in data:
        return None
    try:
        return x509.load_pem_x509_certificate(data[key])
    except ValueError:
        return None


def not_after(data: Data | None) -> dt.datetime | None:
    cert = _cert(data)
    return cert.not_valid_after_utc if cert else None


def fingerprint(pem: bytes) -> str:
    return node_tls.fingerprint(x509.load_pem_x509_certificate(pem))


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext}


def _pems(bundle: bytes) -> list[bytes]:
    try:
        return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(bundle)]
    except ValueError:
        return []


def _valid(pem: bytes, now: dt.datetime) -> bool:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc > now


def _data_secret(c: manifests.Cluster, name: str, raw: Mapping[str, bytes]) -> dict[str, Any]:
    meta = manifests._meta(c, name, "tls")
    cert = x509.load_pem_x509_certificate(raw["tls.crt"])
    meta["annotations"] = {NOT_AFTER: cert.not_valid_after_utc.isoformat()}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in raw.items()}}


# ---- the CA Secret ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _CA:
    """The CA Secret: the signing CA, the next one during a rotation, and the trust bundle."""

    active: pki.KeyPair
    next: pki.KeyPair | None
    retiring: tuple[bytes, ...]   # CAs still trusted but no longer signing

    @property
    def bundle(self) -> bytes:
        nxt = (self.next.cert_pem,) if self.next else ()
        return b"".join((self.active.cert_pem, *nxt, *self.retiring))

    def data(self) -> dict[str, bytes]:
        out = {"tls.crt": self.active.cert_pem, "tls.key": self.active.key_pem,
               "ca.crt": self.bundle}
        if self.next is not None:
            out[NEXT_CRT] = self.next.cert_pem
            out[NEXT_KEY] = self.next.key_pem
        return out


def _pair(data: Data, crt: str, key: str, now: dt.datetime) -> pki.KeyPair | None:
    cert = _cert(data, crt)
    if cert is None or key not in data or cert.not_valid_after_utc <= now:
        return None
    return pki.KeyPair(cert.public_bytes(Encoding.PEM), data[key])  # normalized PEM


def _read_ca(data: Data | None, now: dt.datetime) -> tuple[_CA | None, list[bytes]]:
    """The CA Secret as stored, or None when it has no usable signing CA (and then the
    certificates it still trusted, so a replacement CA keeps trusting them)."""
    if not data:
        return None, []
    trusted = [p for p in _pems(data.get("ca.crt", b"")) if _valid(p, now)]
    active = _pair(data, "tls.crt", "tls.key", now)
    if active is None:
        return None, trusted
    nxt = _pair(data, NEXT_CRT, NEXT_KEY, now)
    mine = {fingerprint(k.cert_pem) for k in (active, nxt) if k is not None}
    return _CA(active, nxt, tuple(p for p in trusted if fingerprint(p) not in mine)), trusted


def _aging(ca: pki.KeyPair, now: dt.datetime) -> bool:
    cert = ca.certificate
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < life / 3


def _new_ca(c: manifests.Cluster, now: dt.datetime) -> pki.KeyPair:
    # A name of its own per CA, so old and new never share a subject in one trust store.
    return pki.create_ca(f"{c.name}.{c.namespace} continuum CA {now:%Y%m%dT%H%M%SZ}",
                         days=CA_DAYS, not_before=now - dt.timedelta(minutes=5))


def _waiting(nodes: Sequence[NodeReport], ok: Callable[[NodeReport], bool]) -> list[str]:
    """Pods that still have to confirm; every pod when none is ready to confirm anything."""
    ready = [n for n in nodes if n.ready]
    if nodes and not ready:
        return sorted(n.pod for n in nodes)
    return sorted(n.pod for n in ready if not ok(n))


# ---- leaves -----------------------------------------------------------------------------------

def _needs_leaf(data: Data | None, ca: pki.KeyPair, sans: set[str], renew_before: float,
                now: dt.datetime) -> str | None:
    cert = _cert(data)
    if cert is None:
        return "missing"
    if cert.issuer != ca.certificate.subject or _cert(data, "ca.crt") is None:
        return "issued by another CA"
    try:
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return "issued by another CA"
    if _sans(cert) != sans:
        return "names changed"
    if (cert.not_valid_after_utc - now).total_seconds() < renew_before:
        return f"expires {cert.not_valid_after_utc.isoformat()}"
    return None


@dataclass(frozen=True, slots=True)
class _Leaf:
    secret: str
    what: str
    issue: Callable[[pki.KeyPair], pki.KeyPair]
    sans: set[str]


def _leaves(c: manifests.Cluster, now: dt.datetime) -> list[_Leaf]:
    tls = c.spec.tls
    days = max(1, math.ceil(api.parse_duration(tls.duration) / 86400))
    start = now - dt.timedelta(minutes=5)  # tolerate clock skew between nodes
    return [
        _Leaf(c.tls_secret, "node certificate",
              lambda ca: pki.issue(ca, c.peer_domain, dns_names=manifests.node_dns_names(c),
                                   uris=[manifests.NODE_ROLE_URI], days=days, server=True,
                                   not_before=start),
              {*manifests.node_dns_names(c), manifests.NODE_ROLE_URI}),
        _Leaf(c.client_secret, "operator client certificate",
              lambda ca: pki.issue(ca, manifests.OPERATOR_CLIENT,
                                   uris=[manifests.OPERATOR_ROLE_URI], days=days, server=False,
                                   not_before=start),
              {manifests.OPERATOR_ROLE_URI}),
    ]


# ---- the plan ---------------------------------------------------------------------------------

def plan(c: manifests.Cluster, existing: Mapping[str, Data | None], now: dt.datetime,
         nodes: Sequence[NodeReport] = (), *, paused: bool = False) -> Plan:
    """The Secrets to write so the CA, node and operator-client certificates are valid.

    ``nodes``: one report per pod that is not terminating. With ``paused`` only leaves
    about to expire are renewed (from the signing CA, trusting what they trusted): an
    expired certificate would take the cluster down, but nothing else changes.
    """
    if paused:
        return _renew_only(c, existing, now, nodes)
    renew_before = api.parse_duration(c.spec.tls.renew_before)
    writes: list[tuple[dict[str, Any], str]] = []
    stored = existing.get(c.ca_secret)
    ca, trusted = _read_ca(stored, now)
    ca_reasons: list[str] = []
    if ca is None:
        # A first run, or a CA Secret without a usable CA: start a new one at once (nodes
        # holding certificates from another CA will not trust it until they reload).
        ca = _CA(_new_ca(c, now), None, tuple(trusted))
        ca_reasons.append("replaced the cluster CA (no usable CA in its Secret)" if stored
                          else "created the cluster CA")
    elif ca.next is None and not ca.retiring and _aging(ca.active, now):
        ca = _CA(ca.active, _new_ca(c, now), ())
        ca_reasons.append("CA rotation phase 1: the new CA is published in every ca.crt; "
                          "leaves stay signed by the old CA until every node trusts it")
    elif ca.next is not None:
        new = fingerprint(ca.next.cert_pem)
        waiting = _waiting(nodes, lambda n: n.trusted_ca is not None and new in n.trusted_ca)
        if not waiting and _published(c, existing, ca):
            ca = _CA(ca.next, None, (ca.active.cert_pem, *ca.retiring))
            ca_reasons.append("CA rotation phase 2: every ready node trusts the new CA; "
                              "it signs from now on and the leaves are re-issued")
    leaves = _leaves(c, now)
    whys = {leaf.secret: _needs_leaf(existing.get(leaf.secret), ca.active, leaf.sans,
                                     renew_before, now) for leaf in leaves}
    if ca.next is None and ca.retiring and not any(whys.values()):
        serving = fingerprint((existing.get(c.tls_secret) or {})["tls.crt"])
        if not _waiting(nodes, lambda n: n.serving == serving):
            ca = _CA(ca.active, None, ())
            ca_reasons.append("CA rotation done: every ready node serves a certificate of "
                              "the new CA; the old CA is no longer trusted")
    if ca.data() != (dict(stored) if stored else None):
        writes.append((_data_secret(c, c.ca_secret, ca.data()),
                       "; ".join(ca_reasons) or "rewrote the CA Secret"))

    for leaf in leaves:
        data = existing.get(leaf.secret)
        why = whys[leaf.secret]
        if why is not None:
            pair = leaf.issue(ca.active)
            raw = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.bundle}
            writes.append((_data_secret(c, leaf.secret, raw), f"issued the {leaf.what} ({why})"))
        elif data is not None and data.get("ca.crt") != ca.bundle:
            raw = {**data, "ca.crt": ca.bundle}
            writes.append((_data_secret(c, leaf.secret, raw),
                           f"published the CA bundle to the {leaf.what}"))
    secrets = [w for w, _ in writes]
    return Plan(secrets, [r for _, r in writes], _rotation(c, ca, secrets, existing, nodes))


def _published(c: manifests.Cluster, existing: Mapping[str, Data | None], ca: _CA) -> bool:
    """Every leaf Secret already carries the bundle with the next CA."""
    return all((existing.get(s) or {}).get("ca.crt") == ca.bundle
               for s in (c.tls_secret, c.client_secret))


def _rotation(c: manifests.Cluster, ca: _CA, written: list[dict[str, Any]],
              existing: Mapping[str, Data | None], nodes: Sequence[NodeReport]
              ) -> api.CARotation | None:
    """Where a rotation stands after this plan's writes (None: no rotation in progress)."""
    if ca.next is not None:
        new = fingerprint(ca.next.cert_pem)
        return api.CARotation(
            phase="PublishingBundle", ca_sha256=new,
            waiting_for=_waiting(nodes, lambda n: n.trusted_ca is not None
                                 and new in n.trusted_ca),
            message="waiting for every ready node to load the new CA")
    if not ca.retiring:
        return None
    leaf = next((decode(s) for s in written if s["metadata"]["name"] == c.tls_secret), None)
    current = (leaf or existing.get(c.tls_secret) or {}).get("tls.crt")
    serving = fingerprint(current) if current else ""
    return api.CARotation(
        phase="ReissuingLeaves", ca_sha256=fingerprint(ca.active.cert_pem),
        waiting_for=_waiting(nodes, lambda n: n.serving == serving),
        message="waiting for every ready node to serve its certificate from the new CA")


def _renew_only(c: manifests.Cluster, existing: Mapping[str, Data | None], now: dt.datetime,
                nodes: Sequence[NodeReport]) -> Plan:
    ca, _ = _read_ca(existing.get(c.ca_secret), now)
    if ca is None:
        return Plan()
    renew_before = api.parse_duration(c.spec.tls.renew_before)
    out = Plan()
    for leaf in _leaves(c, now):
        data = existing.get(leaf.secret)
        cert = _cert(data)
        if data is None or cert is None:
            continue
        if (cert.not_valid_after_utc - now).total_seconds() >= renew_before:
            continue
        pair = leaf.issue(ca.active)
        raw = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem,
               "ca.crt": data.get("ca.crt", ca.bundle)}
        out.secrets.append(_data_secret(c, leaf.secret, raw))
        out.reasons.append(f"renewed the {leaf.what} while paused "
                           f"(expires {cert.not_valid_after_utc.isoformat()})")
    return Plan(out.secrets, out.reasons, _rotation(c, ca, out.secrets, existing, nodes))

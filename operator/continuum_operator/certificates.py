"""The operator-managed CA (tls.mode SelfSigned): which Secrets to (re)issue, and their contents.

Pure apart from key generation: the current time is passed in and the
cluster's Secrets are given as decoded dicts. Secrets use cert-manager's
layout (``tls.crt``, ``tls.key``, ``ca.crt``), so nodes read both modes the
same way. Leaves are renewed ``renewBefore`` ahead of expiry; the node
certificate carries one wildcard DNS name, so scaling never re-issues it.
The CA is renewed when a third of its life is left; the previous CA stays in
``ca.crt`` until it expires, so certificates signed by either are trusted
during the overlap.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from continuum.federation.distributed import pki

from . import manifests
from . import spec as api

NOT_AFTER = f"{api.PREFIX}/not-after"
CA_DAYS = 3650

Data = Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class Plan:
    secrets: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


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


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext}


def _pems(bundle: bytes) -> list[bytes]:
    return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(bundle)]


def _still_valid(pem: bytes, now: dt.datetime) -> bool:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc > now


def _secret(c: manifests.Cluster, name: str, pair: pki.KeyPair, ca_bundle: bytes
            ) -> dict[str, Any]:
    meta = manifests._meta(c, name, "tls")
    meta["annotations"] = {NOT_AFTER: pair.certificate.not_valid_after_utc.isoformat()}
    raw = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca_bundle}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in raw.items()}}


def _ca(data: Data | None, now: dt.datetime) -> tuple[pki.KeyPair | None, bytes]:
    cert = _cert(data)
    if cert is None or data is None or "tls.key" not in data:
        return None, b""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life / 3:
        return None, data.get("ca.crt", data["tls.crt"])
    return pki.KeyPair(data["tls.crt"], data["tls.key"]), data.get("ca.crt", data["tls.crt"])


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


def plan(c: manifests.Cluster, existing: Mapping[str, Data | None], now: dt.datetime) -> Plan:
    """The Secrets to write so the CA, node and operator-client certificates are valid."""
    tls = c.spec.tls
    duration_days = max(1, math.ceil(api.parse_duration(tls.duration) / 86400))
    renew_before = api.parse_duration(tls.renew_before)
    start = now - dt.timedelta(minutes=5)  # tolerate clock skew between nodes
    out = Plan()

    ca, old_bundle = _ca(existing.get(c.ca_secret), now)
    if ca is None:
        ca = pki.create_ca(f"{c.name}.{c.namespace} continuum CA", days=CA_DAYS)
        keep = [p for p in (_pems(old_bundle) if old_bundle else []) if _still_valid(p, now)]
        bundle = b"".join([ca.cert_pem, *keep])
        out.secrets.append(_secret(c, c.ca_secret, ca, bundle))
        out.reasons.append("created the cluster CA" if not old_bundle else "renewed the cluster CA")
    else:
        bundle = old_bundle

    node_sans = {*manifests.node_dns_names(c), manifests.NODE_ROLE_URI}
    why = _needs_leaf(existing.get(c.tls_secret), ca, node_sans, renew_before, now)
    if why is not None:
        pair = pki.issue(ca, c.peer_domain, dns_names=manifests.node_dns_names(c),
                         uris=[manifests.NODE_ROLE_URI], days=duration_days, server=True,
                         not_before=start)
        out.secrets.append(_secret(c, c.tls_secret, pair, bundle))
        out.reasons.append(f"issued the node certificate ({why})")

    client_sans = {manifests.OPERATOR_ROLE_URI}
    why = _needs_leaf(existing.get(c.client_secret), ca, client_sans, renew_before, now)
    if why is not None:
        pair = pki.issue(ca, manifests.OPERATOR_CLIENT, uris=[manifests.OPERATOR_ROLE_URI],
                         days=duration_days, server=False, not_before=start)
        out.secrets.append(_secret(c, c.client_secret, pair, bundle))
        out.reasons.append(f"issued the operator client certificate ({why})")
    return out


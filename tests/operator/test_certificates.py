"""The operator-managed CA: issue, keep, renew before expiry, rotate the CA with an overlap."""

from __future__ import annotations

import datetime as dt
from typing import Any

from builders import cluster, validate
from cryptography import x509

from continuum.federation.distributed.transport import tls
from continuum_operator import certificates

NOW = dt.datetime.now(dt.UTC)


def _store(plan: certificates.Plan, into: dict[str, Any] | None = None) -> dict[str, Any]:
    store = dict(into or {})
    for secret in plan.secrets:
        store[secret["metadata"]["name"]] = certificates.decode(secret)
    return store


def test_first_run_issues_ca_node_and_client() -> None:
    c = cluster()
    plan = certificates.plan(c, {}, NOW)
    names = [s["metadata"]["name"] for s in plan.secrets]
    assert names == ["demo-ca", "demo-tls", "demo-operator-client-tls"]
    for secret in plan.secrets:
        validate(secret)
        assert secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    store = _store(plan)
    node = x509.load_pem_x509_certificate(store["demo-tls"]["tls.crt"])
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "*.demo-peers.prod.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    assert tls.NODE_ROLE_URI in sans.get_values_for_type(x509.UniformResourceIdentifier)
    client = x509.load_pem_x509_certificate(store["demo-operator-client-tls"]["tls.crt"])
    uris = client.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:continuum:role:client:operator"]
    # The wildcard speaks for every pod, so scaling never needs a new certificate.
    ids = frozenset(["*.demo-peers.prod.svc.cluster.local"])
    assert tls.authorizes(ids, "demo-41", "demo-peers.prod.svc.cluster.local")


def test_valid_certificates_are_left_alone() -> None:
    c = cluster()
    store = _store(certificates.plan(c, {}, NOW))
    assert certificates.plan(c, store, NOW).secrets == []


def test_leaves_renewed_before_expiry_with_the_same_ca() -> None:
    c = cluster(tls={"duration": "2160h", "renewBefore": "360h"})
    store = _store(certificates.plan(c, {}, NOW))
    later = NOW + dt.timedelta(days=90 - 14)
    plan = certificates.plan(c, store, later)
    assert [s["metadata"]["name"] for s in plan.secrets] == ["demo-tls",
                                                             "demo-operator-client-tls"]
    assert any("expires" in r for r in plan.reasons)
    renewed = _store(plan, store)
    assert renewed["demo-tls"]["ca.crt"] == store["demo-tls"]["ca.crt"]
    assert certificates.not_after(renewed["demo-tls"]) > certificates.not_after(store["demo-tls"])


def test_ca_rotation_keeps_the_old_ca_trusted() -> None:
    c = cluster()
    store = _store(certificates.plan(c, {}, NOW))
    old_ca = store["demo-ca"]["tls.crt"]
    late = NOW + dt.timedelta(days=certificates.CA_DAYS * 0.7)
    plan = certificates.plan(c, store, late)
    assert plan.reasons[0] == "renewed the cluster CA"
    rotated = _store(plan, store)
    bundle = rotated["demo-tls"]["ca.crt"]
    assert old_ca in bundle and rotated["demo-ca"]["tls.crt"] in bundle


def test_name_change_reissues_the_node_certificate() -> None:
    store = _store(certificates.plan(cluster(namespace="a"), {}, NOW))
    plan = certificates.plan(cluster(namespace="b"), store, NOW)
    assert "demo-tls" in [s["metadata"]["name"] for s in plan.secrets]


def test_secrets_never_expose_keys_in_annotations() -> None:
    for secret in certificates.plan(cluster(), {}, NOW).secrets:
        assert "PRIVATE" not in str(secret["metadata"])

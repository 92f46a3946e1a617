"""The operator-managed CA: issue, keep, renew before expiry, rotate the CA with an overlap."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
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
    assert uris == ["urn:continuum:role:admin"]
    # The wildcard speaks for every pod (the nodes opt in), so scaling needs no new one.
    ids = tls.identity_from_peercert({"subjectAltName": (
        ("DNS", "*.demo-peers.prod.svc.cluster.local"),)})
    assert tls.authorizes(ids, "demo-41", "demo-peers.prod.svc.cluster.local", wildcard=True)


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


# ---- CA rotation: two phases gated on what the nodes report ----------------------------------

PODS = ("demo-0", "demo-1", "demo-2")
# A cluster made this long ago has under a third of its CA's life left now. (The phases run
# at the real time: the handshake checks below use OpenSSL's clock.)
PAST = NOW - dt.timedelta(days=certificates.CA_DAYS * 0.7)
LONG = {"duration": "87600h"}  # ten-year leaves: still valid when the CA ages


def rotating() -> Any:
    return cluster(tls=LONG)


def loaded(store: dict[str, Any], pods: tuple[str, ...] = PODS, ready: bool = True
           ) -> list[certificates.NodeReport]:
    """Nodes whose mounted files are the node Secret of ``store`` (what they report)."""
    leaf = store["demo-tls"]
    return [certificates.NodeReport(
        pod, ready, frozenset(tls.pem_fingerprints(leaf["ca.crt"])),
        tls.pem_fingerprints(leaf["tls.crt"])[0]) for pod in pods]


def _names(plan: certificates.Plan) -> list[str]:
    return [s["metadata"]["name"] for s in plan.secrets]


def _issuer_ok(leaf: bytes, ca: bytes) -> bool:
    try:
        x509.load_pem_x509_certificate(leaf).verify_directly_issued_by(
            x509.load_pem_x509_certificate(ca))
    except Exception:
        return False
    return True


def _handshake(tmp: Path, server: dict[str, bytes], client: dict[str, bytes]) -> bool:
    """A real TLS 1.3 mutual handshake (OpenSSL, in memory) between two nodes' files."""
    def files(name: str, data: dict[str, bytes]) -> tls.TLSFiles:
        d = tmp / name
        d.mkdir(exist_ok=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (d / key).write_bytes(data[key])
        return tls.TLSFiles.from_dir(d)

    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = tls.server_context(files("server", server)).wrap_bio(s_in, s_out, server_side=True)
    cli = tls.client_context(files("client", client)).wrap_bio(c_in, c_out, server_side=False)
    done: set[str] = set()
    for _ in range(10):
        for side, obj in (("client", cli), ("server", srv)):
            if side not in done:
                try:
                    obj.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            break
    else:
        return False
    # TLS 1.3: the server judges the client certificate after the client has finished.
    cli.write(b"ping")
    s_in.write(c_out.read())
    try:
        return srv.read(4) == b"ping"
    except ssl.SSLError:
        return False


def _compatible(tmp: Path, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Nodes holding the node Secret of ``before`` and of ``after`` (one kubelet sync apart)
    authenticate each other both ways."""
    old, new = before["demo-tls"], after["demo-tls"]
    assert _handshake(tmp, old, new) and _handshake(tmp, new, old)


def test_a_handshake_fails_across_unrelated_cas(tmp_path: Path) -> None:
    """The handshake check itself can fail: two clusters' nodes do not trust each other."""
    a = _store(certificates.plan(cluster(), {}, NOW))
    b = _store(certificates.plan(cluster(), {}, NOW))
    assert _handshake(tmp_path, a["demo-tls"], a["demo-tls"])
    assert not _handshake(tmp_path, a["demo-tls"], b["demo-tls"])


def test_ca_rotation_in_two_phases_never_breaks_a_lagging_node(tmp_path: Path) -> None:
    c = rotating()
    assert certificates.plan(c, _store(certificates.plan(c, {}, NOW)), NOW).secrets == []
    s0 = _store(certificates.plan(c, {}, PAST))
    old_ca = s0["demo-ca"]["tls.crt"]

    # Phase 1: a new CA, published next to the old one; no leaf is re-issued.
    p1 = certificates.plan(c, s0, NOW, loaded(s0))
    assert _names(p1) == ["demo-ca", "demo-tls", "demo-operator-client-tls"]
    for secret in p1.secrets:
        validate(secret)
    assert p1.reasons[0].startswith("CA rotation phase 1")
    s1 = _store(p1, s0)
    new_ca = s1["demo-ca"]["next.crt"]
    assert s1["demo-ca"]["tls.crt"] == old_ca  # the old CA still signs
    for leaf in ("demo-tls", "demo-operator-client-tls"):
        assert s1[leaf]["tls.crt"] == s0[leaf]["tls.crt"]
        assert s1[leaf]["tls.key"] == s0[leaf]["tls.key"]
        assert s1[leaf]["ca.crt"] == old_ca + new_ca
    assert p1.rotation is not None and p1.rotation.phase == "PublishingBundle"
    assert p1.rotation.ca_sha256 == certificates.fingerprint(new_ca)
    assert p1.rotation.waiting_for == list(PODS)
    _compatible(tmp_path, s0, s1)

    # The kubelet has not synced yet, or only some pods: wait, write nothing.
    for nodes in (loaded(s0), [*loaded(s1, PODS[:2]), *loaded(s0, PODS[2:])]):
        p = certificates.plan(c, s1, NOW, nodes)
        assert p.secrets == [] and p.rotation is not None
        assert p.rotation.phase == "PublishingBundle"
    assert p.rotation.waiting_for == ["demo-2"]
    # A ready pod that does not answer, or does not report its CAs, holds it up too.
    unreachable = [*loaded(s1, PODS[:2]), certificates.NodeReport("demo-2", True)]
    assert certificates.plan(c, s1, NOW, unreachable).secrets == []

    # Phase 2: every ready node trusts the new CA (a NotReady one does not count).
    nodes = [*loaded(s1, PODS[:2]), *loaded(s0, PODS[2:], ready=False)]
    p2 = certificates.plan(c, s1, NOW, nodes)
    assert _names(p2) == ["demo-ca", "demo-tls", "demo-operator-client-tls"]
    assert p2.reasons[0].startswith("CA rotation phase 2")
    s2 = _store(p2, s1)
    assert s2["demo-ca"]["tls.crt"] == new_ca and "next.crt" not in s2["demo-ca"]
    for leaf in ("demo-tls", "demo-operator-client-tls"):
        assert _issuer_ok(s2[leaf]["tls.crt"], new_ca)
        assert s2[leaf]["ca.crt"] == new_ca + old_ca
    assert p2.rotation is not None and p2.rotation.phase == "ReissuingLeaves"
    assert p2.rotation.waiting_for == ["demo-0", "demo-1"]
    _compatible(tmp_path, s1, s2)

    # Nodes still serve the old leaves: the old CA stays trusted.
    assert certificates.plan(c, s2, NOW, loaded(s1)).secrets == []
    # Every ready node serves the new leaf: the old CA goes from every ca.crt.
    p3 = certificates.plan(c, s2, NOW, loaded(s2))
    assert _names(p3) == ["demo-ca", "demo-tls", "demo-operator-client-tls"]
    assert p3.reasons[0].startswith("CA rotation done")
    s3 = _store(p3, s2)
    for leaf in ("demo-tls", "demo-operator-client-tls"):
        assert s3[leaf]["tls.crt"] == s2[leaf]["tls.crt"]
        assert s3[leaf]["ca.crt"] == new_ca
    assert p3.rotation is None
    _compatible(tmp_path, s2, s3)
    assert certificates.plan(c, s3, NOW, loaded(s3)).secrets == []


def test_one_cycle_rotation_would_break_a_lagging_node(tmp_path: Path) -> None:
    """Why the phases: a node still on the old files rejects a leaf of the new CA."""
    c = rotating()
    s0 = _store(certificates.plan(c, {}, PAST))
    s1 = _store(certificates.plan(c, s0, NOW, loaded(s0)), s0)
    jumped = _store(certificates.plan(c, s1, NOW, loaded(s1)), s1)  # leaves of the new CA
    assert not _handshake(tmp_path, s0["demo-tls"], jumped["demo-tls"])


def test_rotation_resumes_from_the_secrets_after_a_partial_write() -> None:
    c = rotating()
    s0 = _store(certificates.plan(c, {}, PAST))
    p1 = certificates.plan(c, s0, NOW, loaded(s0))
    only_ca = _store(certificates.Plan(p1.secrets[:1], p1.reasons[:1]), s0)
    # Crashed after the CA Secret: publish the bundle first, even if nodes claim trust.
    claims = [certificates.NodeReport(p, True, frozenset(
        tls.pem_fingerprints(only_ca["demo-ca"]["ca.crt"])), None) for p in PODS]
    p = certificates.plan(c, only_ca, NOW, claims)
    assert _names(p) == ["demo-tls", "demo-operator-client-tls"]
    assert all(r.startswith("published the CA bundle") for r in p.reasons)
    s1 = _store(p1, s0)
    p2 = certificates.plan(c, s1, NOW, loaded(s1))
    promoted = _store(certificates.Plan(p2.secrets[:1], p2.reasons[:1]), s1)
    # Crashed after promoting the CA: the leaves are re-issued from it next time.
    p = certificates.plan(c, promoted, NOW, loaded(s1))
    assert _names(p) == ["demo-tls", "demo-operator-client-tls"]
    assert all("issued by another CA" in r for r in p.reasons)
    assert p.rotation is not None and p.rotation.phase == "ReissuingLeaves"


def test_no_ready_node_means_no_confirmation() -> None:
    c = rotating()
    s0 = _store(certificates.plan(c, {}, PAST))
    s1 = _store(certificates.plan(c, s0, NOW, loaded(s0)), s0)
    assert certificates.plan(c, s1, NOW, loaded(s1, ready=False)).secrets == []


def test_a_leaf_expiring_during_phase_1_is_renewed_by_the_old_ca() -> None:
    c = cluster()  # 90-day leaves: expired by the time the CA ages
    s0 = _store(certificates.plan(c, {}, PAST))
    s1 = _store(certificates.plan(c, s0, NOW, loaded(s0)), s0)
    old_ca, new_ca = s1["demo-ca"]["tls.crt"], s1["demo-ca"]["next.crt"]
    assert _issuer_ok(s1["demo-tls"]["tls.crt"], old_ca)
    assert not _issuer_ok(s1["demo-tls"]["tls.crt"], new_ca)
    assert s1["demo-tls"]["ca.crt"] == old_ca + new_ca


# ---- paused: only certificates about to expire are renewed ------------------------------------

def test_paused_renews_a_certificate_about_to_expire_and_nothing_else() -> None:
    c = cluster(paused=True)
    s0 = _store(certificates.plan(c, {}, NOW))
    soon = NOW + dt.timedelta(days=80)  # inside renewBefore (15 days) of a 90-day life
    assert certificates.plan(c, s0, NOW + dt.timedelta(days=10), paused=True).secrets == []
    p = certificates.plan(c, s0, soon, paused=True)
    assert _names(p) == ["demo-tls", "demo-operator-client-tls"]
    assert all("while paused" in r for r in p.reasons)
    s1 = _store(p, s0)
    for leaf in ("demo-tls", "demo-operator-client-tls"):
        assert s1[leaf]["ca.crt"] == s0[leaf]["ca.crt"]  # trust unchanged
        assert _issuer_ok(s1[leaf]["tls.crt"], s0["demo-ca"]["tls.crt"])
        assert certificates.not_after(s1[leaf]) > certificates.not_after(s0[leaf])  # type: ignore[operator]
    assert certificates.plan(c, s1, soon, paused=True).secrets == []


def test_paused_neither_starts_nor_advances_a_ca_rotation() -> None:
    c = rotating()
    s0 = _store(certificates.plan(c, {}, PAST))
    paused = certificates.plan(c, s0, NOW, loaded(s0), paused=True)
    assert paused.secrets == [] and paused.rotation is None
    s1 = _store(certificates.plan(c, s0, NOW, loaded(s0)), s0)
    p = certificates.plan(c, s1, NOW, loaded(s1), paused=True)  # every node trusts it
    assert p.secrets == []
    assert p.rotation is not None and p.rotation.phase == "PublishingBundle"
    assert p.rotation.waiting_for == []


def test_paused_does_not_issue_a_missing_certificate() -> None:
    c = cluster()
    s0 = _store(certificates.plan(c, {}, NOW))
    del s0["demo-tls"]
    assert certificates.plan(c, s0, NOW, paused=True).secrets == []
    assert certificates.plan(c, {}, NOW, paused=True).secrets == []


def test_name_change_reissues_the_node_certificate() -> None:
    store = _store(certificates.plan(cluster(namespace="a"), {}, NOW))
    plan = certificates.plan(cluster(namespace="b"), store, NOW)
    assert "demo-tls" in [s["metadata"]["name"] for s in plan.secrets]


def test_secrets_never_expose_keys_in_annotations() -> None:
    for secret in certificates.plan(cluster(), {}, NOW).secrets:
        assert "PRIVATE" not in str(secret["metadata"])

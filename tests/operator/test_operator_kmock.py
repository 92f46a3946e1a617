"""The real operator (kopf + our handlers) against kmock's Kubernetes emulator.

Pods are made by a mock StatefulSet controller; their node API is a fake over real mutual
TLS on 127.0.5.x that keeps a Raft-like membership and logs every membership call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import (
    NS,
    Api,
    Emulator,
    FakeFederation,
    MockStatefulSetController,
    declare_resources,
    free_port,
    operator_settings,
    revision,
    run_operator,
    wait_until,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.kmock(cls=Emulator)]

OWNED = [
    "/api/v1/namespaces/prod/configmaps/demo-config",
    "/api/v1/namespaces/prod/services/demo-peers",
    "/api/v1/namespaces/prod/services/demo",
    "/apis/apps/v1/namespaces/prod/statefulsets/demo",
    "/api/v1/namespaces/prod/secrets/demo-tls",
    "/api/v1/namespaces/prod/secrets/demo-ca",
    "/api/v1/namespaces/prod/secrets/demo-operator-client-tls",
]


class Env:
    def __init__(self, kmock: Any, tmp_path: Path) -> None:
        self.kmock = kmock
        self.api = Api(str(kmock.url))
        self.fed = FakeFederation("demo", free_port(), tmp_path / "nodes")
        self.controller = MockStatefulSetController(self.api, self.fed)
        self.settings = operator_settings(str(kmock.url), self.fed.port)

    async def members(self) -> list[str]:
        st = await self.api.cr_status("demo")
        return [m["name"] for m in st.get("members") or []]

    async def converged(self, n: int) -> bool:
        st = await self.api.cr_status("demo")
        voters = [m for m in st.get("members") or [] if m.get("voter")]
        return (st.get("phase") == "Running" and len(voters) == n
                and st.get("readyReplicas") == n and not st.get("operation"))


@pytest.fixture()
async def env(kmock: Any, tmp_path: Path) -> AsyncIterator[Env]:
    declare_resources(kmock)
    e = Env(kmock, tmp_path)
    e.controller.start()
    try:
        yield e
    finally:
        await e.controller.stop()
        await e.fed.stop()
        await e.api.close()


async def test_created_cluster_gets_owned_objects_and_converges(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        for path in OWNED:
            await wait_until(lambda p=path: env.api.get(p), 20, path)
        sts = await env.api.get(OWNED[3])
        assert sts is not None and sts["metadata"]["ownerReferences"][0]["uid"] == "uid-demo"
        await wait_until(lambda: env.converged(3), 60, "3 ready voters")
        st = await env.api.cr_status("demo")
        assert st["leader"] == "demo-0" and st["selector"]
        assert env.fed.log == [("bootstrap", "demo-0"), ("add_learner", "demo-1"),
                               ("promote", "demo-1"), ("add_learner", "demo-2"),
                               ("promote", "demo-2")]
        reasons = {e["reason"] for e in await env.api.events()}
        assert {"Created", "CertificateIssued", "GrowStatefulSet", "AddMember"} <= reasons


# ---- helpers for the scenarios ----------------------------------------------------------------

def reconciles() -> float:
    from prometheus_client import REGISTRY
    return sum(REGISTRY.get_sample_value("continuum_operator_reconciles_total", {"result": r})
               or 0.0 for r in ("ok", "busy", "error"))


async def cycles(n: int) -> None:
    """Wait until the operator finished ``n`` more reconcile cycles."""
    start = reconciles()
    await wait_until(lambda: reconciles() >= start + n, 30, f"{n} reconcile cycles")


async def ordered_events(env: Env, reason: str | None = None) -> list[str]:
    events = sorted(await env.api.events(), key=lambda e: e["metadata"]["name"])
    return [f"{e['reason']}: {e['message']}" for e in events
            if reason is None or e["reason"] == reason]


async def patch_spec(env: Env, spec: dict[str, Any]) -> None:
    await env.api.call("PATCH", env.api.cr_path("demo"), {"spec": spec})


async def annotate(env: Env, key: str, value: str | None) -> None:
    await env.api.call("PATCH", env.api.cr_path("demo"),
                       {"metadata": {"annotations": {key: value}}})


def index(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


# ---- scenarios --------------------------------------------------------------------------------

@pytest.mark.slow  # many one-member steps: ~45 s on a loaded 2-core machine
async def test_scale_3_to_5_to_3_one_member_at_a_time(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        start = len(env.fed.log)
        # kubectl scale goes through the scale subresource
        await env.api.call("PATCH", env.api.cr_path("demo", "scale"), {"spec": {"replicas": 5}})
        await wait_until(lambda: env.converged(5), 90, "5 voters")
        assert env.fed.log[start:] == [("add_learner", "demo-3"), ("promote", "demo-3"),
                                       ("add_learner", "demo-4"), ("promote", "demo-4")]
        ev = await ordered_events(env)
        assert (index(ev, "grown to 4") < index(ev, "member demo-3 added")
                < index(ev, "grown to 5") < index(ev, "member demo-4 added"))
        start = len(env.fed.log)
        await patch_spec(env, {"replicas": 3})
        await wait_until(lambda: env.converged(3), 90, "back to 3 voters")
        assert env.fed.log[start:] == [("remove", "demo-4"), ("remove", "demo-3")]
        ev = await ordered_events(env)
        # Raft removal first, then the StatefulSet shrinks, then (only then) the PVC goes.
        assert (index(ev, "member demo-4 removed") < index(ev, "shrunk to 4")
                < index(ev, "PVC data-demo-4 deleted") < index(ev, "member demo-3 removed")
                < index(ev, "shrunk to 3") < index(ev, "PVC data-demo-3 deleted"))
        pvcs = {p["metadata"]["name"] for p in await env.api.items(
            f"/api/v1/namespaces/{NS}/persistentvolumeclaims")}
        assert pvcs == {"data-demo-0", "data-demo-1", "data-demo-2"}


async def test_spec_change_patches_children_and_restarts_leader_last(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        cm_path = f"/api/v1/namespaces/{NS}/configmaps/demo-config"
        before = (await env.api.get(OWNED[3]) or {})["spec"]["template"]
        start = len(env.fed.log)
        await patch_spec(env, {"mesh": {"fanout": 5}})

        async def patched() -> bool:
            cm = await env.api.get(cm_path)
            return bool(cm and "fanout: 5" in cm["data"]["node.yaml"])

        await wait_until(patched, 30, "ConfigMap patched")

        async def new_template() -> bool:  # the config hash moved: a new revision to roll out
            return (await env.api.get(OWNED[3]) or {})["spec"]["template"] != before

        await wait_until(new_template, 30, "pod template patched")

        async def rolled() -> bool:
            sts = await env.api.get(OWNED[3]) or {}
            rev = revision(sts["spec"]["template"])
            pods = await env.api.items(f"/api/v1/namespaces/{NS}/pods")
            return (len(pods) == 3 and all(p["metadata"]["labels"].get(
                "controller-revision-hash") == rev for p in pods) and await env.converged(3))

        await wait_until(rolled, 90, "every pod restarted on the new revision")
        deleted = await ordered_events(env, "DeletePod")
        assert [d.split()[2] for d in deleted] == ["demo-2", "demo-1", "demo-0"]
        assert "old leader restart" in deleted[-1]
        assert env.fed.log[start:] == [("transfer", "demo-0->demo-1")]  # no membership change


@pytest.mark.slow  # many one-member steps: ~45 s on a loaded 2-core machine
async def test_unsafe_scale_down_is_refused_then_forced_and_quorum_recovered(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        await env.fed.stop_node("demo-1")  # demo-1's process dies; its pod stays
        await patch_spec(env, {"replicas": 2})

        async def blocked() -> bool:
            return (await env.api.condition("demo", "ScaleBlocked")).get("status") == "True"

        await wait_until(blocked, 30, "ScaleBlocked")
        warning = await env.api.events("ScaleBlocked")
        assert warning and warning[0]["type"] == "Warning"
        assert "force-scale-down" in warning[0]["message"]
        assert not [e for e in env.fed.log if e[0] == "remove"]
        st = await env.api.cr_status("demo")
        assert st["phase"] == "Degraded" and "quorum" in st["blockedReason"]

        # The override: remove demo-2 anyway; with demo-1 down, quorum is lost, loudly.
        await annotate(env, "continuum.dev/force-scale-down", "true")

        async def lost() -> bool:
            return (await env.api.cr_status("demo")).get("phase") == "QuorumLost"

        try:
            await wait_until(lost, 60, "QuorumLost")
        except AssertionError:
            print(await env.api.cr_status("demo"), env.fed.log, await ordered_events(env))
            raise
        assert ("remove", "demo-2") in env.fed.log
        quorum = await env.api.condition("demo", "Quorum")
        assert quorum["status"] == "False" and "recover-quorum" in quorum["message"]
        assert await env.api.events("QuorumLost")

        # The documented recovery: restart the NotReady pods.
        await annotate(env, "continuum.dev/recover-quorum", "attempt-1")
        await wait_until(lambda: env.converged(2), 60, "quorum back with 2 voters")
        assert await env.api.events("RecoverQuorum")
        assert await env.api.events("QuorumRestored")
        assert (await env.api.cr_status("demo"))["recoveryHandled"] == "attempt-1"


async def test_force_new_cluster_only_without_quorum_then_members_are_added_back(
        env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")

        async def handled(value: str | None) -> bool:
            return (await env.api.cr_status("demo")).get("forceNewClusterHandled") == value

        # With a leader the annotation is refused (and recorded), never acted on.
        await annotate(env, "continuum.dev/force-new-cluster", "demo-2")
        await wait_until(lambda: handled("demo-2"), 30, "the refusal recorded")
        refused = await env.api.events("ForceNewClusterRefused")
        assert refused and refused[0]["type"] == "Warning"
        assert "quorum is not lost" in refused[0]["message"]
        await annotate(env, "continuum.dev/force-new-cluster", None)
        await wait_until(lambda: handled(None), 30, "the record forgotten")

        # Two of three members are lost for good; demo-0 survives.
        for pod in ("demo-1", "demo-2"):
            await env.fed.stop_node(pod)

        async def lost() -> bool:
            return (await env.api.cr_status("demo")).get("phase") == "QuorumLost"

        await wait_until(lost, 60, "QuorumLost")
        await annotate(env, "continuum.dev/force-new-cluster", "demo-0")
        await wait_until(lambda: handled("demo-0"), 30, "the recovery recorded")
        assert ("force_new_cluster", "demo-0") in env.fed.log
        done = await env.api.events("ForceNewCluster")
        assert done and done[0]["type"] == "Warning" and "sole voter" in done[0]["message"]
        # The replaced pods come back empty; the ordinary path adds them one at a time.
        for pod in ("demo-1", "demo-2"):
            await env.api.call("DELETE", f"/api/v1/namespaces/prod/pods/{pod}")
        await wait_until(lambda: env.converged(3), 90, "3 voters again")
        adds = [e for e in env.fed.log[env.fed.log.index(("force_new_cluster", "demo-0")):]
                if e[0] in ("add_learner", "promote")]
        assert adds == [("add_learner", "demo-1"), ("promote", "demo-1"),
                        ("add_learner", "demo-2"), ("promote", "demo-2")]
        assert env.fed.log.count(("force_new_cluster", "demo-0")) == 1


async def test_operator_killed_mid_removal_resumes_without_a_second_removal(env: Env) -> None:
    removed = asyncio.Event()
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 4})
        await wait_until(lambda: env.converged(4), 90, "4 voters")
        # The removal commits, but the operator never hears back: it is stopped mid-call.
        env.fed.after_remove = lambda member: removed.set()
        env.fed.hold_reply = asyncio.Event()
        await patch_spec(env, {"replicas": 3})
        await asyncio.wait_for(removed.wait(), 60)
    env.fed.hold_reply.set()
    env.fed.hold_reply = None
    env.fed.after_remove = None
    assert env.fed.log[-1] == ("remove", "demo-3")
    st = await env.api.cr_status("demo")
    assert st["operation"]["member"] == "demo-3"  # recorded before the call
    assert (await env.api.get(OWNED[3]) or {})["spec"]["replicas"] == 4
    async with run_operator(env.settings):  # a fresh operator: no memory but the status
        await wait_until(lambda: env.converged(3), 60, "3 voters after restart")
    assert [e for e in env.fed.log if e[0] == "remove"] == [("remove", "demo-3")]
    assert (await env.api.get(OWNED[3]) or {})["spec"]["replicas"] == 3


async def test_pvc_stays_until_the_removal_commits(env: Env) -> None:
    # A short membership timeout: the held removal call times out instead of taking 5 s.
    settings = env.settings.model_copy(update={"membership_timeout": 1.0})
    async with run_operator(settings):
        await env.api.create_cluster("demo", {"replicas": 4})
        await wait_until(lambda: env.converged(4), 90, "4 voters")
        env.fed.hold_commit = asyncio.Event()
        await patch_spec(env, {"replicas": 3})
        await wait_until(lambda: ("remove", "demo-3") in env.fed.log, 30, "removal appended")
        await cycles(4)
        # demo-3 is gone from the leader's members, but not committed: nothing irreversible.
        assert "demo-3" not in await env.members()
        assert (await env.api.get(OWNED[3]) or {})["spec"]["replicas"] == 4
        assert not await _absent(env, "persistentvolumeclaims", "data-demo-3")
        op = (await env.api.cr_status("demo"))["operation"]
        assert op["member"] == "demo-3" and not op.get("removalConfirmed")
        env.fed.hold_commit.set()
        await wait_until(lambda: env.converged(3), 60, "3 voters once committed")
        await wait_until(lambda: _absent(env, "persistentvolumeclaims", "data-demo-3"), 30,
                         "PVC deleted after the commit")
    ev = await ordered_events(env)
    assert index(ev, "shrunk to 3") < index(ev, "PVC data-demo-3 deleted")
    assert [e for e in env.fed.log if e[0] in ("remove", "commit_remove")] == [
        ("remove", "demo-3"), ("commit_remove", "demo-3")]


async def _secret(env: Env, name: str) -> dict[str, bytes]:
    import base64

    raw = await env.api.get(f"/api/v1/namespaces/{NS}/secrets/{name}")
    assert raw is not None
    return {k: base64.b64decode(v) for k, v in raw["data"].items()}


async def _rotation(env: Env) -> dict[str, Any] | None:
    st = await env.api.cr_status("demo")
    rotation: dict[str, Any] | None = (st.get("certificates") or {}).get("rotation")
    return rotation


async def _talks_to_nodes(env: Env) -> bool:
    st = await env.api.cr_status("demo")
    quorum = next((c for c in st.get("conditions") or [] if c["type"] == "Quorum"), {})
    return st.get("leader") == "demo-0" and quorum.get("status") == "True"


@pytest.mark.slow  # a whole CA rotation, three kubelet syncs: ~30 s on a loaded machine
async def test_ca_rotation_waits_for_every_pod_at_each_phase(env: Env) -> None:
    import datetime as dt

    from builders import cluster

    from continuum.federation.distributed.transport import tls
    from continuum_operator import certificates

    spec = {"replicas": 3, "tls": {"duration": "87600h"}}
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", spec)
        await wait_until(lambda: env.converged(3), 90, "3 voters")
        # Give the cluster a CA with under a third of its life left (made "years ago", while
        # paused so the operator leaves it be), and let every pod load it.
        await patch_spec(env, {"paused": True})
        await wait_until(lambda: _phase_is(env, "Paused"), 30, "paused")
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=certificates.CA_DAYS * 0.7)
        aged = certificates.plan(cluster(**spec), {}, past)
        for secret in aged.secrets:
            await env.api.call("PATCH", f"/api/v1/namespaces/{NS}/secrets/"
                               f"{secret['metadata']['name']}", {"data": secret["data"]})
        assert await env.controller.sync_mounts() == 3
        await wait_until(lambda: _talks_to_nodes(env), 30, "the operator on the aged CA")
        old_leaf = (await _secret(env, "demo-tls"))["tls.crt"]
        old_ca = (await _secret(env, "demo-ca"))["tls.crt"]

        # Phase 1: the bundle is published; no pod has it yet, so no leaf changes.
        await patch_spec(env, {"paused": False})

        async def phase(name: str) -> dict[str, Any] | None:
            rotation = await _rotation(env)
            return rotation if rotation and rotation["phase"] == name else None

        one = await wait_until(lambda: phase("PublishingBundle"), 30, "phase 1")
        assert one["waitingFor"] == ["demo-0", "demo-1", "demo-2"]
        await cycles(4)
        assert await phase("PublishingBundle")
        node = await _secret(env, "demo-tls")
        assert node["tls.crt"] == old_leaf
        new_ca = (await _secret(env, "demo-ca"))["next.crt"]
        assert node["ca.crt"] == old_ca + new_ca
        assert await _talks_to_nodes(env)

        # The kubelet syncs: every pod trusts the new CA, so leaves come from it now.
        assert await env.controller.sync_mounts() == 3
        two = await wait_until(lambda: phase("ReissuingLeaves"), 30, "phase 2")
        assert two["caSha256"] == tls.pem_fingerprints(new_ca)[0]
        node = await _secret(env, "demo-tls")
        assert node["tls.crt"] != old_leaf and node["ca.crt"] == new_ca + old_ca
        assert "next.crt" not in await _secret(env, "demo-ca")
        await cycles(4)
        assert await phase("ReissuingLeaves")  # pods still serve the old leaves
        # The operator's new client certificate (new CA) is accepted by every pod.
        assert await _talks_to_nodes(env)
        assert all(env.fed.loaded[p][1] == tls.pem_fingerprints(old_leaf)[0]
                   for p in ("demo-0", "demo-1", "demo-2"))

        # The kubelet syncs again: every pod serves the new leaf; the old CA is dropped.
        assert await env.controller.sync_mounts() == 3
        await wait_until(lambda: _no_rotation(env), 30, "rotation finished")
        assert (await _secret(env, "demo-tls"))["ca.crt"] == new_ca
        assert (await _secret(env, "demo-ca"))["ca.crt"] == new_ca
        assert await env.controller.sync_mounts() == 3
        await wait_until(lambda: env.converged(3), 30, "still 3 voters")
    ev = await ordered_events(env, "CertificateIssued")
    assert (index(ev, "CA rotation phase 1") < index(ev, "CA rotation phase 2")
            < index(ev, "CA rotation done"))


@pytest.mark.slow  # two operator runs and a rolling restart: ~40 s on a loaded machine
async def test_an_upgraded_operator_rolls_a_changed_pod_template_but_not_while_paused(
        env: Env) -> None:
    sts_path = OWNED[3]
    pods_path = f"/api/v1/namespaces/{NS}/pods"
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        await patch_spec(env, {"paused": True})
        await wait_until(lambda: _phase_is(env, "Paused"), 30, "paused")
    # What an older operator release rendered: here, another readiness probe period. Its
    # pods run that template (the controller re-creates them from it).
    sts = await env.api.get(sts_path) or {}
    containers = sts["spec"]["template"]["spec"]["containers"]
    containers[0]["readinessProbe"]["periodSeconds"] = 7
    await env.api.call("PATCH", sts_path, {"spec": {"template": {"spec": {
        "containers": containers}}}})
    old_rev = revision((await env.api.get(sts_path) or {})["spec"]["template"])
    for pod in await env.api.items(pods_path):
        await env.api.call("DELETE", f"{pods_path}/{pod['metadata']['name']}")

    async def on_old_template() -> bool:
        pods = await env.api.items(pods_path)
        return len(pods) == 3 and all(
            p["metadata"]["labels"]["controller-revision-hash"] == old_rev for p in pods)

    await wait_until(on_old_template, 30, "pods on the older template")

    async with run_operator(env.settings):  # the upgraded operator
        await cycles(4)
        # Paused: the new operator leaves the older template and its pods alone.
        assert revision((await env.api.get(sts_path) or {})["spec"]["template"]) == old_rev
        assert await on_old_template()
        assert not await env.api.events("DeletePod")
        await patch_spec(env, {"paused": False})

        async def rolled() -> bool:
            live = await env.api.get(sts_path) or {}
            rev = revision(live["spec"]["template"])
            pods = await env.api.items(pods_path)
            return (rev != old_rev and len(pods) == 3 and all(
                p["metadata"]["labels"]["controller-revision-hash"] == rev for p in pods)
                and await env.converged(3))

        await wait_until(rolled, 90, "pods rolled onto the new operator's template")
    deleted = await ordered_events(env, "DeletePod")
    assert [d.split()[2] for d in deleted] == ["demo-2", "demo-1", "demo-0"]
    assert "old leader restart" in deleted[-1]


async def _phase_is(env: Env, phase: str) -> bool:
    return (await env.api.cr_status("demo")).get("phase") == phase


async def _no_rotation(env: Env) -> bool:
    return await _rotation(env) is None


async def test_paused_cluster_keeps_children_but_updates_status(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 1})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        await patch_spec(env, {"paused": True, "replicas": 2, "mesh": {"fanout": 7}})

        async def paused() -> bool:
            return (await env.api.cr_status("demo")).get("phase") == "Paused"

        await wait_until(paused, 30, "phase Paused")
        assert (await env.api.condition("demo", "Paused"))["status"] == "True"
        await cycles(3)
        cm = await env.api.get(f"/api/v1/namespaces/{NS}/configmaps/demo-config") or {}
        assert "fanout: 3" in cm["data"]["node.yaml"]
        assert (await env.api.get(OWNED[3]) or {})["spec"]["replicas"] == 1
        # status still follows the cluster while paused
        await env.fed.stop_node("demo-0")

        async def no_ready() -> bool:
            return (await env.api.cr_status("demo")).get("readyReplicas") == 0

        await wait_until(no_ready, 30, "status updated while paused")
        await env.api.call("DELETE", f"/api/v1/namespaces/{NS}/pods/demo-0")
        await patch_spec(env, {"paused": False})
        await wait_until(lambda: env.converged(2), 60, "resumed: 2 voters")
        cm = await env.api.get(f"/api/v1/namespaces/{NS}/configmaps/demo-config") or {}
        assert "fanout: 7" in cm["data"]["node.yaml"]


async def test_paused_cluster_still_renews_a_certificate_about_to_expire(env: Env) -> None:
    import base64
    import datetime as dt

    from builders import cluster

    from continuum.federation.distributed import pki
    from continuum_operator import certificates, manifests

    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 1})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        await patch_spec(env, {"paused": True, "mesh": {"fanout": 7}})
        await wait_until(lambda: _phase_is(env, "Paused"), 30, "paused")
        ca = await _secret(env, "demo-ca")
        node = await _secret(env, "demo-tls")
        # Ten days left, under renewBefore (15 days): it would expire during the pause.
        short = pki.issue(pki.KeyPair(ca["tls.crt"], ca["tls.key"]), "demo",
                          dns_names=manifests.node_dns_names(cluster()),
                          uris=[manifests.NODE_ROLE_URI], days=10)
        await env.api.call("PATCH", f"/api/v1/namespaces/{NS}/secrets/demo-tls", {"data": {
            "tls.crt": base64.b64encode(short.cert_pem).decode(),
            "tls.key": base64.b64encode(short.key_pem).decode()}})
        await wait_until(lambda: _renewed_while_paused(env), 30, "renewal while paused")
        renewed = await _secret(env, "demo-tls")
        left = certificates.not_after(renewed) - dt.datetime.now(dt.UTC)  # type: ignore[operator]
        assert left > dt.timedelta(days=80)
        assert renewed["ca.crt"] == node["ca.crt"]
        # ... and nothing else changed while paused.
        cm = await env.api.get(f"/api/v1/namespaces/{NS}/configmaps/demo-config") or {}
        assert "fanout: 3" in cm["data"]["node.yaml"]


async def _renewed_while_paused(env: Env) -> bool:
    return any("while paused" in e["message"] for e in await env.api.events("CertificateIssued"))


async def test_deleted_cluster_is_cleaned_up(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 1, "storage": {
            "retention": {"whenDeleted": "Delete"}}})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        cr = await env.api.cr("demo")
        assert "continuum.dev/finalizer" in cr["metadata"].get("finalizers", [])
        await env.api.call("DELETE", env.api.cr_path("demo"))

        async def gone() -> bool:
            return await env.api.get(env.api.cr_path("demo")) is None

        await wait_until(gone, 30, "FederationCluster deleted")
        for path in OWNED:
            assert await env.api.get(path) is None, path
        await wait_until(lambda: _absent(env, "persistentvolumeclaims", "data-demo-0"), 30,
                         "PVC deleted")


async def _absent(env: Env, plural: str, name: str) -> bool:
    return await env.api.get(f"/api/v1/namespaces/{NS}/{plural}/{name}") is None


async def test_invalid_cluster_gets_a_clear_error_and_no_children(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 0, "tls": {"mode": "CertManager"}})

        async def rejected() -> dict[str, Any]:
            ready = await env.api.condition("demo", "Ready")
            return ready if ready.get("reason") == "InvalidSpec" else {}

        ready = await wait_until(rejected, 30, "InvalidSpec condition")
        assert "spec.replicas" in ready["message"] and "issuerRef is required" in ready["message"]
        assert (await env.api.cr_status("demo"))["phase"] == "Invalid"
        warnings = await env.api.events("InvalidSpec")
        assert warnings and warnings[0]["type"] == "Warning"
        await cycles(2)
        assert await env.api.get(OWNED[3]) is None
        # Fixing the spec reconciles normally.
        await env.api.call("PATCH", env.api.cr_path("demo"), {"spec": {
            "replicas": 1, "tls": {"mode": "SelfSigned"}}})
        await wait_until(lambda: env.converged(1), 60, "fixed spec converges")


async def test_measure_new_cluster_latency_and_that_a_noop_reconcile_writes_nothing(
        env: Env, record_property: Any) -> None:
    """Figures for the report (printed, never asserted), and the no-write property."""
    import kopf

    memo = kopf.Memo()
    async with run_operator(env.settings, memo):
        t0 = time.perf_counter()
        await env.api.create_cluster("demo", {"replicas": 1})

        async def all_owned() -> bool:
            for path in OWNED:
                if await env.api.get(path) is None:
                    return False
            return True

        await wait_until(all_owned, 30, "all owned objects")
        created = time.perf_counter() - t0
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        await cycles(2)
        kube, rec = memo["kube"], memo["reconciler"]
        writes = kube.writes
        timings = []
        for _ in range(5):
            t = time.perf_counter()
            await rec.reconcile(NS, "demo")
            timings.append(time.perf_counter() - t)
        assert kube.writes == writes, "a no-op reconcile wrote to the API"
        # Over several daemon cycles nobody (operator, kopf, mock controller) writes at all.
        before = [r for r in env.kmock._requests if r.method.value != "GET"]
        await cycles(3)
        after = [r for r in env.kmock._requests if r.method.value != "GET"]
        assert len(after) == len(before), [str(r.url) for r in after[len(before):]]
    noop = sorted(timings)[len(timings) // 2]
    print(f"\nFIGURES new CR -> all owned objects: {created:.3f} s; "
          f"no-op reconcile: {noop * 1000:.1f} ms median, 0 writes")
    record_property("new_cr_to_owned_objects_s", round(created, 3))
    record_property("noop_reconcile_ms", round(noop * 1000, 1))


async def test_cert_manager_mode_gives_each_pod_its_own_certificate(env: Env) -> None:
    """Per-pod by default: the pods' TLS volume is cert-manager's CSI driver (played by the
    StatefulSet controller here, from the issuer's CA); the operator asks cert-manager only
    for its own client certificate, with the admin role, and reads expiry from the nodes."""
    import base64

    from continuum.federation.distributed import pki

    ca = env.controller.csi_ca = pki.create_ca("cert-manager test CA")
    spec = {"replicas": 3, "tls": {"mode": "CertManager",
                                   "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}}
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", spec)
        base = f"/apis/cert-manager.io/v1/namespaces/{NS}/certificates"
        client = await wait_until(lambda: env.api.get(f"{base}/demo-operator-client"), 30,
                                  "client Certificate")
        assert client["spec"]["uris"] == ["urn:continuum:role:admin"]
        assert await env.api.get(f"{base}/demo-node") is None  # nothing shared
        s = client["spec"]
        pair = pki.issue(ca, s["commonName"], uris=s["uris"], server=False)
        data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
        await env.api.call("POST", f"/api/v1/namespaces/{NS}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": s["secretName"], "namespace": NS},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
        await wait_until(lambda: env.converged(3), 90, "3 voters with per-pod certificates")
        served = {env.fed.loaded[pod][1] for pod in ("demo-0", "demo-1", "demo-2")}
        assert len(served) == 3  # a certificate of its own each
        certs = (await env.api.cr_status("demo"))["certificates"]
        assert "secretName" not in certs and certs["notAfter"]
        assert (await env.api.condition("demo", "CertificatesReady"))["status"] == "True"


async def test_cert_manager_mode_wildcard_opt_in_uses_one_shared_secret(env: Env) -> None:
    import base64

    from continuum.federation.distributed import pki

    spec = {"replicas": 1, "tls": {"mode": "CertManager", "wildcard": True,
                                   "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}}}
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", spec)
        base = f"/apis/cert-manager.io/v1/namespaces/{NS}/certificates"
        node = await wait_until(lambda: env.api.get(f"{base}/demo-node"), 30, "node Certificate")
        client = await wait_until(lambda: env.api.get(f"{base}/demo-operator-client"), 30,
                                  "client Certificate")
        assert node["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
        assert await env.api.get(f"/api/v1/namespaces/{NS}/secrets/demo-ca") is None
        # Play cert-manager: issue what each Certificate asks for into its Secret.
        ca = pki.create_ca("cert-manager test CA")
        for cert in (node, client):
            s = cert["spec"]
            pair = pki.issue(ca, s.get("commonName") or "node", dns_names=s.get("dnsNames", []),
                             uris=s["uris"], server="server auth" in s["usages"])
            data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
            await env.api.call("POST", f"/api/v1/namespaces/{NS}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": s["secretName"], "namespace": NS},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})
        await wait_until(lambda: env.converged(1), 60, "1 voter with cert-manager certificates")
        certs = (await env.api.cr_status("demo"))["certificates"]
        assert certs["secretName"] == "demo-tls" and certs["notAfter"]
        assert (await env.api.condition("demo", "CertificatesReady"))["status"] == "True"

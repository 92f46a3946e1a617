"""Production concerns, the real operator (kopf + our handlers) against kmock's emulator:
quantities in any spelling, online volume expansion, restarts that wait for a member to
catch up, another cluster DNS domain, invalid names and fields fixed at creation, and
members that share a Kubernetes node.

The emulator stores quantities canonically, as the API server does (``harness.Emulator``).
"""

from __future__ import annotations

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
from test_operator_kmock import OWNED, cycles, ordered_events, patch_spec

pytestmark = [pytest.mark.timeout(180), pytest.mark.kmock(cls=Emulator)]

STS = OWNED[3]
PODS = f"/api/v1/namespaces/{NS}/pods"
PVCS = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"


class Env:
    def __init__(self, kmock: Any, tmp_path: Path, hosts: int) -> None:
        self.kmock = kmock
        self.api = Api(str(kmock.url))
        self.fed = FakeFederation("demo", free_port(), tmp_path / "nodes")
        self.controller = MockStatefulSetController(self.api, self.fed, hosts=hosts)
        self.settings = operator_settings(str(kmock.url), self.fed.port)

    async def converged(self, n: int) -> bool:
        st = await self.api.cr_status("demo")
        voters = [m for m in st.get("members") or [] if m.get("voter")]
        return (st.get("phase") == "Running" and len(voters) == n
                and st.get("readyReplicas") == n and not st.get("operation"))

    def writes(self) -> list[str]:
        return [f"{r.method.value} {r.url.path}" for r in self.kmock._requests
                if r.method.value != "GET"]


@pytest.fixture()
async def env(kmock: Any, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    declare_resources(kmock)
    marker = request.node.get_closest_marker("hosts")
    e = Env(kmock, tmp_path, marker.args[0] if marker else 3)
    e.controller.start()
    try:
        yield e
    finally:
        await e.controller.stop()
        await e.fed.stop()
        await e.api.close()


async def test_an_unchanged_cluster_is_left_alone_whatever_the_quantity_spelling(
        env: Env) -> None:
    """1, 0.5, 0.5Gi, 1000m and 1e3 come back from the API server as 1, 500m, 512Mi, 1 and
    1e3: the same amounts, so a reconcile sends no write and posts no Event."""
    import kopf

    resources = {"requests": {"cpu": "0.5", "memory": "0.5Gi", "ephemeral-storage": "1000m"},
                 "limits": {"cpu": 1, "memory": "1Gi", "ephemeral-storage": "1e3"}}
    memo = kopf.Memo()
    async with run_operator(env.settings, memo):
        await env.api.create_cluster("demo", {"replicas": 1, "resources": resources})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        sts = await env.api.get(STS) or {}
        live = sts["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert live == {"requests": {"cpu": "500m", "memory": "512Mi",
                                     "ephemeral-storage": "1"},
                        "limits": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1e3"}}
        await cycles(2)
        events = len(await env.api.events())
        kube, rec = memo["kube"], memo["reconciler"]
        writes = kube.writes
        for _ in range(3):
            await rec.reconcile(NS, "demo")
        assert kube.writes == writes, "a no-op reconcile wrote to the API"
        before = env.writes()
        await cycles(3)
        assert env.writes() == before
        assert len(await env.api.events()) == events, [
            e["reason"] for e in (await env.api.events())[events:]]


async def _storage_class(env: Env, name: str, expandable: bool) -> None:
    path = f"/apis/storage.k8s.io/v1/storageclasses/{name}"
    body = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": "csi.example.com",
            "allowVolumeExpansion": expandable}
    if await env.api.get(path) is None:
        await env.api.call("POST", "/apis/storage.k8s.io/v1/storageclasses", body)
    else:
        await env.api.call("PATCH", path, {"allowVolumeExpansion": expandable})


async def _requested(env: Env) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"]["resources"]["requests"]["storage"]
            for p in await env.api.items(PVCS)}


async def _storage(env: Env) -> tuple[dict[str, Any], dict[str, Any]]:
    st = await env.api.cr_status("demo")
    cond = next(c for c in st["conditions"] if c["type"] == "StorageResized")
    return cond, st.get("storage") or {}


async def test_a_larger_storage_size_grows_each_pvc_online_when_the_class_allows(
        env: Env) -> None:
    await _storage_class(env, "standard", expandable=False)
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 2, "storage": {
            "size": "1Gi", "storageClassName": "standard"}})
        await wait_until(lambda: env.converged(2), 60, "2 voters")
        assert (await _storage(env))[0]["status"] == "True"
        template = (await env.api.get(STS) or {})["spec"]["volumeClaimTemplates"]
        await patch_spec(env, {"storage": {"size": "2Gi"}})

        async def reason(want: str) -> bool:
            return (await _storage(env))[0].get("reason") == want

        # The class does not allow expansion: said clearly, nothing patched.
        await wait_until(lambda: reason("ExpansionNotSupported"), 30, "refusal")
        cond, storage = await _storage(env)
        assert "standard" in cond["message"] and "allowVolumeExpansion" in cond["message"]
        assert storage == {"size": "2Gi", "pending": ["data-demo-0", "data-demo-1"]}
        warning = await env.api.events("ExpansionNotSupported")
        assert len(warning) == 1 and warning[0]["type"] == "Warning"
        await cycles(3)
        assert await _requested(env) == {"data-demo-0": "1Gi", "data-demo-1": "1Gi"}
        assert len(await env.api.events("ExpansionNotSupported")) == 1

        # The administrator allows it: each PVC is asked to grow, once.
        await _storage_class(env, "standard", expandable=True)

        async def asked() -> bool:
            return set((await _requested(env)).values()) == {"2Gi"}

        await wait_until(asked, 30, "PVCs patched")
        await wait_until(lambda: reason("Resizing"), 30, "resizing")
        await cycles(3)
        grown = await ordered_events(env, "VolumeExpansion")
        assert sorted(grown) == ["VolumeExpansion: PVC data-demo-0 grown to 2Gi (online "
                                 "expansion)", "VolumeExpansion: PVC data-demo-1 grown to 2Gi "
                                 "(online expansion)"]
        # The volume driver finishes: the capacity is the new size.
        for pvc in ("data-demo-0", "data-demo-1"):
            await env.api.call("PATCH", f"{PVCS}/{pvc}/status",
                               {"status": {"capacity": {"storage": "2Gi"}}})
        await wait_until(lambda: reason("AsRequested"), 30, "resized")
        assert (await _storage(env))[1] == {"size": "2Gi", "pending": []}
        # The StatefulSet's immutable template is left as it was; nothing restarted.
        sts = await env.api.get(STS) or {}
        assert sts["spec"]["volumeClaimTemplates"] == template
        assert not await env.api.events("DeletePod")
        assert not await env.api.events("StorageChangeNotApplied")


async def test_a_restart_waits_until_the_restarted_member_caught_up(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        env.fed.commit = 1000
        restarted: list[str] = []

        def slow_start(pod: str) -> None:  # a restarted node has its log to catch up on
            restarted.append(pod)
            env.fed.behind[pod] = 500

        env.fed.on_start = slow_start
        await env.api.call("PATCH", env.api.cr_path("demo"), {"metadata": {"annotations": {
            "continuum.dev/restart": "1"}}})
        await wait_until(lambda: restarted == ["demo-2"], 30, "demo-2 restarted")

        async def ready(pod: str) -> bool:
            p = await env.api.get(f"{PODS}/{pod}") or {}
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in p.get("status", {}).get("conditions", []))

        await wait_until(lambda: ready("demo-2"), 30, "demo-2 ready again")
        await cycles(5)
        # Ready, but 500 entries behind: the next follower is not restarted.
        assert restarted == ["demo-2"]
        assert [e.split()[2] for e in await ordered_events(env, "DeletePod")] == ["demo-2"]
        op = (await env.api.cr_status("demo"))["operation"]
        assert (op["type"], op["member"]) == ("Update", "demo-2")
        env.fed.behind.clear()
        env.fed.on_start = None

        async def rolled() -> bool:
            sts = await env.api.get(STS) or {}
            rev = revision(sts["spec"]["template"])
            pods = await env.api.items(PODS)
            return (len(pods) == 3 and all(p["metadata"]["labels"].get(
                "controller-revision-hash") == rev for p in pods) and await env.converged(3))

        await wait_until(rolled, 90, "the rest rolled once demo-2 caught up")
        deleted = await ordered_events(env, "DeletePod")
        assert [d.split()[2] for d in deleted] == ["demo-2", "demo-1", "demo-0"]


async def test_another_cluster_domain_is_used_for_addresses_and_certificates(
        env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 2, "clusterDomain": "corp.internal"})
        # The operator reaches each pod as <pod>.demo-peers.prod.svc.corp.internal: it only
        # converges if the certificates it issued carry names in that domain.
        await wait_until(lambda: env.converged(2), 60, "2 voters in corp.internal")
        sts = await env.api.get(STS) or {}
        env_vars = {e["name"]: e.get("value") for e in
                    sts["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env_vars["CONTINUUM_PEER_DOMAIN"] == "demo-peers.prod.svc.corp.internal"
        assert ("add_learner", "demo-1") in env.fed.log
        # A later change of domain is refused, naming the field; nothing is rewritten.
        await patch_spec(env, {"clusterDomain": "cluster.local"})

        async def refused() -> dict[str, Any]:
            ready = await env.api.condition("demo", "Ready")
            return ready if ready.get("reason") == "InvalidSpec" else {}

        ready = await wait_until(refused, 30, "refusal")
        assert "spec.clusterDomain" in ready["message"] and "corp.internal" in ready["message"]
        await cycles(2)
        assert (await env.api.get(STS) or {})["spec"]["template"] == sts["spec"]["template"]


async def test_an_invalid_name_is_refused_before_any_child_exists(env: Env) -> None:
    name = "a" * 53
    async with run_operator(env.settings):
        await env.api.create_cluster(name, {"replicas": 1})

        async def refused() -> dict[str, Any]:
            ready = await env.api.condition(name, "Ready")
            return ready if ready.get("reason") == "InvalidSpec" else {}

        ready = await wait_until(refused, 30, "InvalidSpec")
        assert ready["message"].startswith("metadata.name: ")
        warnings = await env.api.events("InvalidSpec")
        assert warnings and "metadata.name" in warnings[0]["message"]
        await cycles(2)
        assert not await env.api.items(f"/apis/apps/v1/namespaces/{NS}/statefulsets")
        assert not await env.api.items(f"/api/v1/namespaces/{NS}/secrets")


async def test_switching_tls_mode_is_refused_and_changes_nothing(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 1})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        secret = await env.api.get(f"/api/v1/namespaces/{NS}/secrets/demo-tls")
        await patch_spec(env, {"tls": {"mode": "CertManager", "issuerRef": {"name": "ca"}}})

        async def refused() -> dict[str, Any]:
            ready = await env.api.condition("demo", "Ready")
            return ready if ready.get("reason") == "InvalidSpec" else {}

        ready = await wait_until(refused, 30, "refusal")
        assert "spec.tls.mode" in ready["message"] and "SelfSigned" in ready["message"]
        await cycles(2)
        assert not await env.api.items(f"/apis/cert-manager.io/v1/namespaces/{NS}/certificates")
        assert await env.api.get(f"/api/v1/namespaces/{NS}/secrets/demo-tls") == secret
        # Set back, the cluster carries on.
        await patch_spec(env, {"tls": {"mode": "SelfSigned", "issuerRef": None}})
        await wait_until(lambda: env.converged(1), 30, "back to normal")


@pytest.mark.hosts(1)
async def test_members_on_one_node_are_reported_with_a_warning(env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        spread = await env.api.condition("demo", "MembersSpread")
        assert (spread["status"], spread["reason"]) == ("False", "QuorumOnOneHost")
        assert "node-0 runs demo-0, demo-1, demo-2" in spread["message"]
        members = (await env.api.cr_status("demo"))["members"]
        assert {m["nodeName"] for m in members} == {"node-0"}
        # One Warning per new finding (2 members, then 3, on node-0), none for a repeat.
        warnings = await env.api.events("QuorumOnOneHost")
        await cycles(3)
        assert len(await env.api.events("QuorumOnOneHost")) == len(warnings)
        last = max(warnings, key=lambda e: e["metadata"]["name"])
        assert last["type"] == "Warning" and last["message"] == spread["message"]
        sts = await env.api.get(STS) or {}
        keys = {t["topologyKey"] for t in sts["spec"]["template"]["spec"][
            "topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


async def test_a_removed_member_that_joined_again_before_its_pod_went_is_removed(
        env: Env) -> None:
    async with run_operator(env.settings):
        await env.api.create_cluster("demo", {"replicas": 4})
        await wait_until(lambda: env.converged(4), 90, "4 voters")
        env.fed.rejoin_before_stop = True
        await patch_spec(env, {"replicas": 3})
        await wait_until(lambda: ("rejoin", "demo-3") in env.fed.log, 60, "demo-3 rejoined")
        env.fed.rejoin_before_stop = False
        # demo-3 is a voter again with no pod: removed once more, then the cluster is whole.
        await wait_until(lambda: env.converged(3), 60, "3 voters, demo-3 gone for good")
        assert [e for e in env.fed.log if e[1] == "demo-3"][-3:] == [
            ("remove", "demo-3"), ("rejoin", "demo-3"), ("remove", "demo-3")]
        assert "demo-3" not in env.fed.members

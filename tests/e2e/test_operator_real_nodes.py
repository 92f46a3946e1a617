"""The real operator (kopf + our handlers, against kmock's Kubernetes emulator) scaling a
cluster of REAL node processes: 3 -> 5 -> 3.

The harness's mock StatefulSet controller makes and deletes the pods; each pod is a real node
(``operator_world.RealFederation``) that finds its peers through the headless Service's SRV
records on a real DNS server and uses the TLS Secret the operator issued (self-signed mode).
The operator reaches the nodes at the pod IPs over mutual TLS, exactly as in a cluster.
What it proves: the operator and the nodes agree on the node contract end to end (status,
member add/remove, certificates, readiness), the real Raft membership follows ``replicas``,
and on the way down each member's removal is committed before its pod is deleted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from e2e.operator_world import RealFederation, harness  # harness: tests/operator/harness.py

NS = harness.NS

pytestmark = [pytest.mark.timeout(300), pytest.mark.kmock(cls=harness.Emulator)]


async def _cr_shows(api: harness.Api, leader: str, n: int) -> bool:
    st = await api.cr_status("demo")
    voters = [m for m in st.get("members") or [] if m.get("voter")]
    ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
    return (st.get("phase") == "Running" and ready.get("status") == "True"
            and st.get("leader") == leader and len(voters) == n
            and st.get("readyReplicas") == n and not st.get("operation"))


async def _converged(api: harness.Api, fed: RealFederation, n: int, timeout: float,
                     what: str) -> str:
    since = time.monotonic()
    state: dict[str, Any] = {}

    async def check() -> bool:
        leader = fed.agreed(n, since)
        state["leader"] = leader
        return bool(leader) and await _cr_shows(api, leader or "", n)

    try:
        await harness.wait_until(check, timeout, what)
    except AssertionError:
        latest = {p: (st.get("leader_id"), [m["id"] for m in st.get("members") or []])
                  for p, (_, st) in fed.latest.items()}
        print("nodes:", latest, "\nCR status:", await api.cr_status("demo"),
              "\npods:", fed.pod_log)
        raise
    return str(state["leader"])


@pytest.mark.slow  # real processes joining one at a time: about a minute
async def test_operator_scales_real_nodes_3_to_5_to_3(kmock: Any, tmp_path: Path) -> None:
    harness.declare_resources(kmock)
    api = harness.Api(str(kmock.url))
    fed = RealFederation(api, "demo", tmp_path / "pods")
    controller = harness.MockStatefulSetController(api, fed)  # type: ignore[arg-type]
    # The operator dials pod IPs on 7000 and checks <pod>.demo-peers.prod.svc.cluster.local.
    settings = harness.operator_settings(str(kmock.url), fed.port, node_timeout=3.0,
                                 membership_timeout=60.0)
    try:
        fed.start()
        controller.start()
        async with harness.run_operator(settings):
            await api.create_cluster("demo", {"replicas": 3})
            leader = await _converged(api, fed, 3, 120, "3 real voters with one leader")
            assert fed.admin is not None  # the admin cert came from the operator's CA Secret

            await api.call("PATCH", api.cr_path("demo"), {"spec": {"replicas": 5}})
            leader = await _converged(api, fed, 5, 120, "5 real voters")
            assert await api.events("AddMember")

            down = time.monotonic()
            await api.call("PATCH", api.cr_path("demo"), {"spec": {"replicas": 3}})
            leader = await _converged(api, fed, 3, 120, "back to 3 real voters")
            assert leader in {"demo-0", "demo-1", "demo-2"}

        # Each removed member had left the real Raft configuration when its pod was deleted:
        # the node leading at that instant (asked right then) no longer listed it.
        for pod in ("demo-4", "demo-3"):
            assert fed.deleted_at(pod, down) is not None, pod
            listed = fed.listed_at_deletion(pod)
            assert listed is not None, (pod, "no surviving node answered")
            assert len(listed) * 2 < len(fed.at_deletion[pod]), (pod, fed.at_deletion[pod])
            # ... and that configuration was committed, not just appended.
            assert fed.committed_at_deletion(pod) in (True, None), (pod, fed.at_deletion[pod])
        # One member at a time, highest ordinal first.
        assert fed.deleted_at("demo-4", down) < fed.deleted_at("demo-3", down)  # type: ignore[operator]
        messages = [e["message"] for e in sorted(await api.events(),
                                                 key=lambda e: e["metadata"]["name"])]
        t0 = fed.pod_log[0][0]
        print("\nevents:", *messages, "pods:", *[f"{t - t0:6.2f}s {what} {p}"
                                                  for t, what, p in fed.pod_log], sep="\n  ")
        print("members as the leader saw them:", *[
            f"{p}: {[(m['id'], m['address']) for m in st['members']]}"
            for p, (_, st) in sorted(fed.latest.items()) if st.get("role") == "leader"],
            sep="\n  ")

        def at(fragment: str) -> int:
            return next(i for i, m in enumerate(messages) if fragment in m)

        assert (at("member demo-4 removed") < at("shrunk to 4")
                < at("member demo-3 removed") < at("shrunk to 3"))
        pvcs = {p["metadata"]["name"] for p in await api.items(
            f"/api/v1/namespaces/{NS}/persistentvolumeclaims")}
        assert pvcs == {"data-demo-0", "data-demo-1", "data-demo-2"}
    finally:
        await controller.stop()
        await fed.stop()
        await api.close()

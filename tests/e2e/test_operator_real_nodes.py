"""The operator, run from the operator image against kmock's Kubernetes emulator, scaling a
cluster whose pods run the node image: 3 -> 5 -> 3, with strong writes flowing throughout.

The harness's mock StatefulSet controller makes and deletes the pods; each pod is a container
of the node image (``operator_world.RealFederation``) configured only by the pod template,
finding its peers through the headless Service's SRV records on a real DNS server and using
the TLS Secret the operator issued (self-signed mode). The operator reaches the nodes at the
pod IPs over mutual TLS, exactly as in a cluster. What it proves: the images work as the
operator deploys them; the operator and the nodes agree on the node contract end to end
(status, member add/remove, certificates, readiness); the real Raft membership follows
``replicas``; on the way down each member's removal is committed before its pod is deleted,
and each deleted pod's process stops cleanly on SIGTERM; no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from continuum.federation.distributed import client
from e2e.operator_world import RealFederation, harness, operator_container
from image.containers import Images

NS = harness.NS

# The images fixture may build the images first (scripts/test builds them before pytest).
pytestmark = [pytest.mark.timeout(900), pytest.mark.kmock(cls=harness.Emulator)]


class Writer:
    """Strong writes, one after another, to the pod that leads, until stopped. A write is
    acknowledged or retried under the same key (and idempotency key) elsewhere."""

    def __init__(self, fed: RealFederation) -> None:
        self.fed = fed
        self.acked: dict[str, tuple[float, int]] = {}  # key -> (monotonic, value)
        self.refused: dict[str, int] = {}  # why a try failed -> how often
        self.stop = asyncio.Event()

    def acked_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t, _ in self.acked.values())

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            leader, admin = self.fed.leader(), self.fed.admin
            if leader is None or admin is None or leader not in self.fed.runners:
                self._count("no leader known")
                await asyncio.sleep(0.1)  # paced: a client backing off
                continue
            key = f"flow-{i}"
            try:
                c = await self.fed.client(leader)
                await c.call("PUT", f"/v1/concepts/{key}", {"i": i}, {"consistency": "strong"},
                             follow_leader=False, headers={"Idempotency-Key": key})
            except client.ApiError as exc:
                self._count(f"{exc.status} {exc.code}")
                await asyncio.sleep(0.1)  # paced: a client backing off
                continue
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._count(type(exc).__name__)
                await self.fed.drop_client(leader)
                await asyncio.sleep(0.1)  # paced: a client backing off
                continue
            self.acked[key] = (time.monotonic(), i)
            i += 1
            await asyncio.sleep(0.05)  # paced: a steady client, not a load test

    def _count(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1


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
        assert not fed.crashed(), f"a pod's container exited: {fed.crashed()}"
        leader = fed.agreed(n, since)
        state["leader"] = leader
        return bool(leader) and await _cr_shows(api, leader or "", n)

    try:
        await harness.wait_until(check, timeout, what)
    except AssertionError:
        latest = {p: (st.get("leader_id"), [m["id"] for m in st.get("members") or []])
                  for p, (_, st) in fed.latest.items()}
        events = [(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp"),
                   e.get("message")) for e in sorted(await api.events(),
                                                     key=lambda e: e["metadata"]["name"])]
        print("nodes:", latest, "\nCR status:", await api.cr_status("demo"),
              "\npods:", fed.pod_log, "\nevents:", *events, sep="\n  ")
        raise
    return str(state["leader"])


@pytest.mark.slow  # real processes joining one at a time: about a minute
async def test_operator_image_scales_node_image_pods_3_to_5_to_3(
        kmock: Any, images: Images, tmp_path: Path) -> None:
    harness.declare_resources(kmock)
    api = harness.Api(str(kmock.url))
    fed = RealFederation(api, "demo", tmp_path / "pods", images.node)
    controller = harness.MockStatefulSetController(api, fed)  # type: ignore[arg-type]
    writer = Writer(fed)
    writing: asyncio.Task[None] | None = None
    try:
        fed.start()
        controller.start()
        # The operator dials pod IPs on 7000 and checks <pod>.demo-peers.prod.svc.cluster.local.
        async with operator_container(images.operator, str(kmock.url), tmp_path,
                                      interval=0.3, busy_interval=0.05, node_port=fed.port,
                                      node_timeout=3.0, membership_timeout=60.0,
                                      metrics_port=0):
            await api.create_cluster("demo", {"replicas": 3})
            leader = await _converged(api, fed, 3, 120, "3 real voters with one leader")
            assert fed.admin is not None  # the admin cert came from the operator's CA Secret
            writing = asyncio.create_task(writer.run())

            up = time.monotonic()
            await api.call("PATCH", api.cr_path("demo"), {"spec": {"replicas": 5}})
            leader = await _converged(api, fed, 5, 120, "5 real voters")
            assert await api.events("AddMember")

            down = time.monotonic()
            await api.call("PATCH", api.cr_path("demo"), {"spec": {"replicas": 3}})
            leader = await _converged(api, fed, 3, 120, "back to 3 real voters")
            assert leader in {"demo-0", "demo-1", "demo-2"}
            done = time.monotonic()
            writer.stop.set()
            await writing

        # Writes flowed while the cluster grew and while it shrank, and every acknowledged
        # one is in the final cluster.
        print(f"\nwrites acknowledged: {len(writer.acked)}; refused: {writer.refused}")
        assert writer.acked_between(up, down) > 0 and writer.acked_between(down, done) > 0
        assert fed.admin is not None
        async with client.ApiClient(fed.api_url(leader), fed.admin, timeout=10) as c:
            lost = [key for key, (_, i) in writer.acked.items()
                    if (await c.get(key, strong=True)).get("value") != {"i": i}]
        assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:10]}"
        # Each deleted pod's node stopped on SIGTERM within its grace period, and no pod
        # wrote outside its volumes (its root filesystem is read-only in a cluster).
        for pod in ("demo-4", "demo-3"):
            assert fed.exits[pod] == (0, []), (pod, fed.exits[pod],
                                               (fed.root / pod / "container.log").read_text())

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
        writer.stop.set()
        if writing is not None and not writing.done():
            writing.cancel()
        await controller.stop()
        await fed.stop()
        await api.close()

"""Real node processes on 127.0.12.x: forming a cluster, and what membership changes do.

* Fresh nodes that know one another's addresses only in part (and learn the
  rest through the mesh), started together, form exactly one cluster: each
  waits until it has verified ``bootstrap_expect`` nodes. The members the mesh
  taught them are verified and cached by discovery, and forgotten when they
  leave.
* A member removed from the cluster for good no longer holds back tombstone
  collection on the replicas that remain.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import waiting
from continuum.federation.distributed import client, pki
from continuum.federation.distributed.transport import tls
from e2e.cluster import Cluster, NodeProcess

IPS = {"fa": "127.0.12.21", "fb": "127.0.12.22", "fc": "127.0.12.23", "fd": "127.0.12.24",
       "fe": "127.0.12.25"}
# Two islands that do not know of each other, {fa, fd} and {fb, fc}, and a bridge fe that
# knows one node of each and starts later.
HINTS = {"fa": ["fd"], "fd": ["fa"], "fb": ["fc"], "fc": ["fb"], "fe": ["fd", "fc"]}


async def _status(admin: tls.TLSFiles, node: NodeProcess) -> dict[str, Any]:
    async with client.ApiClient(node.api_url, admin, timeout=5) as c:
        return await c.status()


@pytest.mark.parametrize("expect", [len(IPS), 1])
async def test_fresh_nodes_with_partial_bootstrap_hints_form_one_cluster(
        tmp_path: Path, expect: int) -> None:
    ca = pki.create_ca()
    admin_pair = pki.issue_client(ca, "admin", role="admin")
    admin = tls.TLSFiles.from_dir(pki.write_secret_dir(tmp_path / "admin", admin_pair,
                                                       ca.cert_pem))
    procs: dict[str, NodeProcess] = {}
    for nid, ip in IPS.items():
        certs = pki.write_secret_dir(tmp_path / nid / "tls",
                                     pki.issue_node(ca, nid, ip_addresses=[ip]), ca.cert_pem)
        procs[nid] = NodeProcess(nid, ip, tmp_path / nid, certs, {
            "CONTINUUM_CLUSTER_NAME": "partial-hints",
            "CONTINUUM_BOOTSTRAP": ",".join(f"{IPS[h]}:7000" for h in HINTS[nid]),
            "CONTINUUM_BOOTSTRAP_EXPECT": str(expect),
            "CONTINUUM_FORMATION_STABLE_SECONDS": "1",
            # A member that misses a leave announcement (fb may not yet know fa is back
            # when it leaves) learns it at its next push-pull: every 30 s by default, as
            # long as this test's bound; here every 2 s, so that path fits the bound too.
            "CONTINUUM_MESH__SYNC_INTERVAL_SECONDS": "2",
        })

    async def statuses(ids: list[str]) -> list[dict[str, Any]]:
        return [await _status(admin, procs[i]) for i in ids]

    try:
        islands = ["fa", "fb", "fc", "fd"]
        random.Random(7).shuffle(islands)
        for nid in islands:  # all at once, in no particular order
            procs[nid].start()

        # Each wait observes what it judges, so a timeout says what the nodes last said.
        async def view(ids: list[str], *fields: str) -> dict[str, tuple[Any, ...]]:
            st = await statuses(ids)
            return {i: tuple(s[f] for f in fields) for i, s in zip(ids, st, strict=True)}

        if expect == 1:
            # The control: founding on the first verified peer splits the islands for good.
            async def islands_view() -> dict[str, tuple[Any, ...]]:
                st = await statuses(["fa", "fb"])
                return {i: (s["role"], len(s["members"]))
                        for i, s in zip(["fa", "fb"], st, strict=True)}

            await waiting.until(islands_view, lambda v: all(x == ("leader", 2) for x in v.values()),
                                timeout=60, what="each island to found its own cluster "
                                "(role, members)", interval=0.1, errors=(Exception,))
            return

        # Each island's founder has verified its island and waits only for the count.
        await waiting.until(lambda: view(["fa", "fb"], "formation"),
                            lambda v: all(x == (f"wait: 2 of {expect} nodes verified",)
                                          for x in v.values()),
                            timeout=60, what="both island founders waiting for the count",
                            interval=0.1, errors=(Exception,))
        procs["fe"].start()

        async def cluster_view() -> dict[str, tuple[Any, ...]]:
            st = await statuses(list(IPS))
            return {i: (s["leader_id"], tuple(sorted(m["id"] for m in s["members"] if m["voter"])),
                        s["ready"]) for i, s in zip(IPS, st, strict=True)}

        everyone = tuple(sorted(IPS))
        await waiting.until(cluster_view, lambda v: len({x[0] for x in v.values()}) == 1
                            and all(x[0] is not None and x[1] == everyone and x[2]
                                    for x in v.values()),
                            timeout=120, what="one cluster of all five nodes (leader, voters, "
                            "ready)", interval=0.1, errors=(Exception,))
        founders = [nid for nid in IPS
                    if "bootstrapping a new cluster" in (tmp_path / nid / "node.log").read_text()]
        assert founders == ["fa"], founders

        # fa was told only of fd: the mesh taught it the others; discovery verifies and
        # caches them (in its own rounds, so not necessarily by the time the cluster formed).
        async def discovery_of_fa() -> dict[str, Any]:
            d = (await _status(admin, procs["fa"]))["discovery"]
            return {k: d[k] for k in ("verified_nodes", "total_nodes", "nodes_by_source")}

        await waiting.until(discovery_of_fa, lambda d: d["verified_nodes"] == 4
                            and d["nodes_by_source"].get("gossip", 0) >= 3, timeout=30,
                            what="fa's discovery to verify the 4 others, 3 learned by gossip",
                            interval=0.1)
        procs["fa"].stop()
        procs["fa"].start()

        st = await waiting.until(lambda: _status(admin, procs["fa"]), lambda s: s["ready"],
                                 timeout=60, what="fa back in its cluster (its status)",
                                 interval=0.1, errors=(Exception,))
        assert st["discovery"]["cache_loaded"] == 4

        # fb leaves: fa forgets it (no other source would ever withdraw it). First fb must
        # have verified the restarted fa again: a hello fb sends to check fa, if it lands
        # after fa heard fb leave, brings fb back into fa's discovery (a known race).
        async def fb_discovery() -> dict[str, Any]:
            d = (await _status(admin, procs["fb"]))["discovery"]
            return {k: d[k] for k in ("verified_nodes", "total_nodes", "nodes_by_source")}

        await waiting.until(fb_discovery, lambda d: d["verified_nodes"] == len(IPS) - 1,
                            timeout=30, what="fb's discovery to verify fa again", interval=0.1)
        procs["fb"].stop()

        await waiting.until(discovery_of_fa, lambda d: d["verified_nodes"] == 3
                            and d["total_nodes"] == 3, timeout=30,
                            what="fa's discovery to forget fb", interval=0.1)
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c3", 3, "127.0.12.1", env={
        "CONTINUUM_REPLICATION__TOMBSTONE_GRACE_SECONDS": "0.5",
        "CONTINUUM_MESH__SYNC_INTERVAL_SECONDS": "1",  # also the anti-entropy interval
    })
    c.start()
    yield c
    c.stop()


async def _replication(c: Cluster, node_id: str) -> dict[str, Any]:
    st = await c.call(node_id, lambda cl: cl.status())
    stats: dict[str, Any] = st["replication"]
    return stats


async def test_tombstones_are_collected_once_a_removed_member_is_gone(cluster3: Cluster) -> None:
    c = cluster3
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    ids = [n.node_id for n in c.nodes]
    victim = next(i for i in ids if i != leader)
    survivors = [i for i in ids if i != victim]
    await c.call(survivors[0], lambda cl: cl.put("doomed", {"v": 1}))
    await c.call(survivors[0], lambda cl: cl.put("kept", {"v": 2}))

    async def everywhere() -> bool:
        for nid in ids:
            try:
                await c.call(nid, lambda cl: cl.get("doomed"))
            except client.ApiError:
                return False
        return True

    await c.wait_for(everywhere, 30, "the value on every node")

    # The victim dies without a word: it may come back, so its vote is still awaited.
    c.local.kill(victim)
    await c.call(survivors[0], lambda cl: cl.delete("doomed"))
    rounds = {nid: (await _replication(c, nid))["anti_entropy_rounds"] for nid in survivors}

    async def held_back() -> bool:
        for nid in survivors:
            r = await _replication(c, nid)
            if r["tombstones"] != 1 or r["anti_entropy_rounds"] < rounds[nid] + 3:
                return False
        return True

    await c.wait_for(held_back, 60, "anti-entropy rounds among the survivors")
    for nid in survivors:
        assert (await _replication(c, nid))["tombstones_collected"] == 0

    # The operator's scale-down: the member leaves the Raft configuration for good.
    async with client.ApiClient(c.url(leader), c.files, timeout=30) as admin:  # type: ignore[arg-type]
        await admin.call("DELETE", f"/v1/members/{victim}")

    async def collected() -> bool:
        for nid in survivors:
            r = await _replication(c, nid)
            if r["tombstones"] != 0 or r["tombstones_collected"] < 1:
                return False
        return True

    await c.wait_for(collected, 60, "the tombstone collected on every survivor")
    for nid in survivors:
        with pytest.raises(client.ApiError):
            await c.call(nid, lambda cl: cl.get("doomed"))
        assert (await c.call(nid, lambda cl: cl.get("kept")))["value"] == {"v": 2}

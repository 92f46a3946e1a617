"""Real GossipMesh processes on 127.0.2.x over mutual TLS: join, dissemination, kill -9, restart.

Timings use ``MeshConfig.local()``; deadlines are generous because the machine
is shared. Figures go to ``bench/gossip.py``; here only correctness is checked.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import TestPKI
from integration.mesh_proc import MeshCluster


@pytest.mark.parametrize("n", [10, pytest.param(30, marks=pytest.mark.slow)])
async def test_join_disseminate_detect_restart(n: int, cluster_pki: TestPKI,
                                               tmp_path: Path) -> None:
    cluster = MeshCluster(tmp_path, n, pki=cluster_pki, ip_base=10 if n == 10 else 40)
    try:
        await cluster.start()
        t = await cluster.wait(lambda: cluster.converged(cluster.ids), 90, "all alive everywhere")
        print(f"N={n}: joined in {t:.1f} s")

        origin = cluster.procs[3]
        origin.update("load", 0.42)
        await cluster.wait(
            lambda: all(p.state.get(("g3", "load"), (None, 0))[0] == 0.42 for p in cluster.procs),
            30, "the update at every member")

        # The kill must land on a settled mesh, or the false-positive check below measures
        # the join: on two cores the burst of handshakes and full-state syncs of 30 starting
        # processes starves some members long enough to be suspected, even declared dead,
        # before they refute (Lifeguard slows the accusers, but cannot stop it all).
        t = await cluster.wait(lambda: cluster.settled(quiet_for=3.0), 120, "a settled mesh")
        print(f"N={n}: settled {t:.1f} s later")

        victim = cluster.procs[-1]
        killed_at = time.monotonic()
        victim.kill()
        assert victim.proc is not None
        await victim.proc.wait()
        t = await cluster.wait(
            lambda: all(p.status.get(victim.node_id) == "dead" for p in cluster.live()),
            90, "the killed member dead everywhere")
        print(f"N={n}: kill -9 detected everywhere in {t:.1f} s")
        # Nobody else was declared dead on the way, not even for a moment.
        assert cluster.declared_dead_since(killed_at) == {victim.node_id}

        # Restart from the same storage: a higher incarnation, a new port, peers from disk.
        old_incarnation = victim.incarnation
        assert old_incarnation is not None
        await victim.start()
        assert victim.incarnation is not None and victim.incarnation > old_incarnation
        # Back means alive everywhere at once. While it starts (imports, a handshake with
        # every peer) a starved newcomer may be suspected for a moment; it refutes that.
        t = await cluster.wait(
            lambda: cluster.converged(cluster.ids) and all(
                p.status.get(victim.node_id) == "alive" for p in cluster.live()
                if p is not victim), 90, "the restarted member alive everywhere")
        print(f"N={n}: restarted member alive everywhere in {t:.1f} s")
        await cluster.wait(lambda: ("g3", "load") in victim.state, 60,
                           "state pulled by the restarted member")
    finally:
        await cluster.stop()


async def test_graceful_leave_is_left_not_dead(cluster_pki: TestPKI, tmp_path: Path) -> None:
    cluster = MeshCluster(tmp_path, 4, pki=cluster_pki, ip_base=80)
    try:
        await cluster.start()
        await cluster.wait(lambda: cluster.converged(cluster.ids), 60, "join")
        leaver = cluster.procs[1]
        leaver._send({"cmd": "leave"})
        assert leaver.proc is not None
        await leaver.proc.wait()
        rest = [p for p in cluster.procs if p is not leaver]
        await cluster.wait(lambda: all(p.status.get("g1") == "left" for p in rest), 30,
                           "left everywhere")
        assert all(p.status.get("g1") != "dead" for p in rest)
    finally:
        await cluster.stop()

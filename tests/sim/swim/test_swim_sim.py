"""Seeded simulations of the SWIM core: dissemination rounds, detection, false positives.

Seeded and in virtual time, so these are deterministic: a failure reproduces
with the same seed. Figures are printed (``pytest -s``) for the record.
"""

from __future__ import annotations

import math

import pytest

from continuum.federation.distributed.core.swim import config as cfg
from continuum.federation.distributed.core.swim import node, suspicion
from continuum.federation.distributed.core.swim.membership import Status
from sim.swim import simnet

# LAN defaults; push-pull is off so that gossip alone is measured.
CONF = cfg.SwimConfig(sync_interval=1e6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_10000_nodes_full_dissemination_within_epidemic_bound(seed: int) -> None:
    rounds = simnet.epidemic_rounds(10_000, fanout=3, retransmit_mult=4, seed=seed)
    bound = simnet.epidemic_bound(10_000, 3)
    print(f"N=10000 seed={seed}: {rounds} rounds (bound log3(N)+3 = {bound:.2f})")
    assert rounds is not None and rounds <= bound


@pytest.mark.parametrize(("loss", "slack"), [(0.0, 0), (0.05, 1), (0.20, 3)])
def test_1000_nodes_dissemination_under_loss(loss: float, slack: int) -> None:
    rounds = simnet.epidemic_rounds(1000, fanout=3, retransmit_mult=4, seed=11, loss=loss)
    bound = simnet.epidemic_bound(1000, 3)
    print(f"N=1000 loss={loss:.0%}: {rounds} rounds (bound {bound:.2f} + {slack})")
    assert rounds is not None and rounds <= bound + slack


def test_too_few_retransmits_can_fail_to_reach_everyone() -> None:
    # The bound above is not vacuous: with one transmission per update the epidemic dies out.
    assert simnet.epidemic_rounds(10_000, fanout=1, retransmit_mult=1, seed=1) is None


def _detect(sim: simnet.SimCluster, victim: str, limit: float) -> float:
    t0 = sim.now
    sim.crash(victim)
    while not sim.status_everywhere(victim, Status.DEAD):
        assert sim.now - t0 < limit, f"{victim} not declared dead everywhere within {limit}s"
        sim.run_for(0.05)
    return sim.now - t0


@pytest.mark.parametrize(("n", "loss"), [(1000, 0.0), (300, 0.05), (150, 0.20)])
def test_full_swim_dissemination_detection_and_false_positives(n: int, loss: float) -> None:
    sim = simnet.SimCluster(n, CONF, seed=5, loss=loss)
    sim.run_for(1.0)
    sim.update_state("n0", "load", 0.5)
    t0 = sim.now
    sim.run_for(2.0)
    reached = sim.state_reached("n0", "load")
    assert set(reached) == set(sim.nodes)
    spread = max(reached.values()) - t0
    # Every observer was told once per new value.
    changes = [o for o in sim.observed
               if isinstance(o.event, node.StateChanged) and o.event.node == "n0"]
    assert len(changes) == n

    lo, hi = suspicion.suspicion_bounds(CONF.suspicion_mult, CONF.suspicion_max_timeout_mult, n,
                                        CONF.probe_interval)
    detect = _detect(sim, f"n{n // 2}", limit=hi + 10 * CONF.probe_interval)
    sim.run_for(3.0)  # keep watching for false positives after the death, too
    false = sim.false_deaths()
    suspicions = sum(s.stats["suspicions"] for s in sim.nodes.values())
    refutations = sum(s.stats["refutations"] for s in sim.nodes.values())
    observed_s = sim.now
    print(f"N={n} loss={loss:.0%}: update to all in {spread * 1000:.0f} ms "
          f"({spread / CONF.gossip_interval:.1f} gossip intervals), dead everywhere after "
          f"{detect:.2f} s (suspicion lo {lo:.1f} s), false deaths {len(false)} over "
          f"{observed_s:.0f} s x {n} nodes, refutations {refutations}, "
          f"suspicion timers {suspicions}, messages {sim.sent}")
    assert spread / CONF.gossip_interval <= math.log(n, CONF.fanout) + 3
    assert detect <= lo + 4 * CONF.probe_interval + 1.0 or loss > 0
    assert false == []


def test_slow_but_alive_node_is_never_declared_dead() -> None:
    # One node handles every message and timer a full second late (4x the probe timeout,
    # twice the probe interval): a starved event loop. It is suspected often, but it
    # refutes in time; and its own late timers raise its local health multiplier, so it
    # stops accusing healthy peers.
    sim = simnet.SimCluster(50, CONF, seed=9)
    sim.slow["n7"] = 1.0
    sim.run_for(40.0)
    slow = sim.nodes["n7"]
    accused_by_slow = [o for o in sim.observed if o.observer == "n7"
                       and isinstance(o.event, node.MemberChanged)
                       and o.event.status == Status.DEAD]
    print(f"slow node: refutations {slow.stats['refutations']}, health x{slow.health.multiplier}, "
          f"late timers {slow.stats['late_timers']}, suspicions started "
          f"{slow.stats['suspicions']}")
    assert sim.false_deaths() == []
    assert accused_by_slow == []
    assert slow.stats["refutations"] > 0  # it really was suspected, and refuted
    assert slow.health.multiplier > 1  # Lifeguard noticed its own slowness
    assert all(sim.nodes[o].members["n7"].status != Status.DEAD for o in sim.nodes)

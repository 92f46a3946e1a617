"""Seeded simulations of the SWIM core: dissemination rounds, detection, false positives.

Seeded and in virtual time, so these are deterministic: a failure reproduces
with the same seed. Figures are printed (``pytest -s``) for the record.

The real ``SwimNode`` core runs here at up to 1,000 members. 10,000 members
use the dissemination model (``simnet.epidemic_rounds``) instead: every core
holds a record of every member, so 10,000 cores hold 10^8 records (about 19 GiB,
extrapolated from 772 MiB at 2,000) and take minutes just to build.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from continuum.federation.distributed.core.swim import config as cfg
from continuum.federation.distributed.core.swim import messages, suspicion
from continuum.federation.distributed.core.swim import swim_node as node
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


def _totals(sim: simnet.SimCluster, stat: str) -> int:
    return sum(s.stats[stat] for s in sim.nodes.values())


# (N, loss, slack): slack is what loss may add to the detection bound, in seconds (lost
# probes and lost confirmations delay the first suspicion and its spread). The 20% run
# is the costliest simulation here (~70 s: every member handles ~100 suspicions a second).
@pytest.mark.parametrize(("n", "loss", "slack"), [
    (1000, 0.0, 0.0), (1000, 0.05, 1.0),
    pytest.param(1000, 0.20, 3.0, marks=pytest.mark.long)])
def test_1000_nodes_dissemination_detection_and_false_positives(
        n: int, loss: float, slack: float) -> None:
    sim = simnet.SimCluster(n, CONF, seed=5, loss=loss)
    sim.run_for(0.5)
    victim = f"n{n // 2}"
    # The update and the crash at once: one window measures both.
    sim.update_state("n0", "load", 0.5)
    t0 = sim.now
    lo, hi = suspicion.suspicion_bounds(CONF.suspicion_mult, CONF.suspicion_max_timeout_mult, n,
                                        CONF.probe_interval)
    bound = lo + 4 * CONF.probe_interval + 1.0 + slack
    detect = _detect(sim, victim, limit=hi + 10 * CONF.probe_interval)
    sim.run_for(1.0)  # keep watching for false positives after the death, too
    reached = sim.state_reached("n0", "load")
    assert set(reached) == set(sim.nodes) - {victim}
    spread = max(reached.values()) - t0
    # Every observer was told once per new value.
    changes = [o for o in sim.observed
               if isinstance(o.event, node.StateChanged) and o.event.node == "n0"]
    assert len(changes) == n - 1
    false = sim.false_deaths()
    print(f"N={n} loss={loss:.0%}: update to all in {spread * 1000:.0f} ms "
          f"({spread / CONF.gossip_interval:.1f} gossip intervals), dead everywhere after "
          f"{detect:.2f} s (bound {bound:.1f} s, suspicion lo {lo:.1f} s), false deaths "
          f"{len(false)} over {sim.now:.0f} s x {n} nodes, refutations "
          f"{_totals(sim, 'refutations')}, suspicion timers {_totals(sim, 'suspicions')}, "
          f"messages {sim.sent}")
    assert spread / CONF.gossip_interval <= math.log(n, CONF.fanout) + 3 + 10 * loss
    assert detect <= bound
    assert false == []


def test_no_false_positive_in_two_minutes_at_5_percent_loss() -> None:
    # 300 members for 150 s: 45,000 member-seconds of probing through lossy links
    # (1,000 members for as long would cost a minute of CI).
    sim = simnet.SimCluster(300, CONF, seed=21, loss=0.05)
    sim.run_for(150.0)
    suspicions, refutations = _totals(sim, "suspicions"), _totals(sim, "refutations")
    print(f"N=300 loss=5% for {sim.now:.0f} s: false deaths {len(sim.false_deaths())}, "
          f"suspicion timers {suspicions}, refutations {refutations}")
    assert refutations > 0  # loss really did cause suspicions, which were refuted in time
    assert sim.false_deaths() == []


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


def _backlogged(conf: cfg.SwimConfig) -> simnet.SimCluster:
    # n7 reads every message a second late while its timers keep time (a receive queue it
    # cannot keep up with): its probes time out although the targets answered.
    sim = simnet.SimCluster(50, conf, seed=9)
    sim.backlog["n7"] = 1.0
    sim.run_for(60.0)
    return sim


def test_lifeguard_is_what_keeps_a_lagging_node_from_causing_false_deaths() -> None:
    with_lifeguard = _backlogged(CONF)
    # The control: Lifeguard's multipliers at 1 (no local health, no dynamic suspicion).
    plain = _backlogged(dataclasses.replace(CONF, awareness_max_multiplier=1,
                                            suspicion_max_timeout_mult=1))
    on, off = with_lifeguard.nodes["n7"], plain.nodes["n7"]
    summary = {name: (len(sim.false_deaths()), _totals(sim, "suspicions"),
                      sim.nodes["n7"].stats["probe_failures"])
               for name, sim in (("lifeguard", with_lifeguard), ("plain", plain))}
    print(f"lagging node, (false deaths, suspicion timers, its failed probes): {summary}")
    assert with_lifeguard.false_deaths() == []
    assert on.health.multiplier > 1 and off.health.multiplier == 1
    # Without Lifeguard the lagging node keeps accusing healthy members.
    assert off.stats["probe_failures"] > 10 * max(1, on.stats["probe_failures"])
    assert plain.false_deaths() or _totals(plain, "suspicions") > 2 * _totals(
        with_lifeguard, "suspicions")


def test_push_pull_alone_converges_when_gossip_is_crippled() -> None:
    # Each update is sent once per ceil(log10 N+1) (retransmit_mult=1) and 90% of gossip
    # messages are lost (probes and syncs are not, so membership stays sound): gossip dies
    # out near its origin. Periodic push-pull must still bring the update to everyone.
    n, base = 200, 2.0
    period = cfg.push_pull_interval(base, n)
    window = math.log2(n) * period

    def run(sync_interval: float) -> simnet.SimCluster:
        conf = cfg.SwimConfig(retransmit_mult=1, sync_interval=sync_interval)
        sim = simnet.SimCluster(n, conf, seed=3)
        sim.kind_loss[messages.Gossip] = 0.9
        sim.run_for(1.0)
        sim.update_state("n0", "k", 1)
        sim.run_for(window)
        return sim

    gossip_only, with_sync = run(1e6), run(base)
    reached = with_sync.state_reached("n0", "k")
    alone = gossip_only.state_reached("n0", "k")
    last = max(reached.values()) - 1.0
    print(f"N={n}, gossip crippled: gossip alone reached {len(alone)}"
          f" nodes in {window:.0f} s; with push-pull every {period:.0f} s all {len(reached)} "
          f"by {last:.1f} s ({last / period:.1f} push-pull intervals)")
    assert len(alone) < n // 10
    assert set(reached) == set(with_sync.nodes)
    assert all(sw.view()["n0"]["k"] == 1 for sw in with_sync.nodes.values())
    assert with_sync.false_deaths() == []

"""Seeded fault schedules against the Raft core: safety after every step, linearizable KV.

Each seed runs a cluster through message loss, duplication, reordering,
delays, partitions, crashes (including between a Ready's early messages and
its fsync) and restarts from what was persisted, plus membership changes and
leadership transfers; then heals everything and requires a leader. A failing
seed reproduces alone: ``RAFT_SEED=123 pytest tests/sim/raft -q``.
``RAFT_SEEDS=2000`` runs more seeds.
"""

from __future__ import annotations

import os

import pytest
from raft_sim import Faults, Sim

from checkers.linearizability import check

SEEDS = ([int(os.environ["RAFT_SEED"])] if "RAFT_SEED" in os.environ
         else range(int(os.environ.get("RAFT_SEEDS", "150"))))


def _run(sim: Sim) -> None:
    sim.run()
    ok, key = check(sim.history)
    assert ok, f"seed {sim.seed}: history of key {key} is not linearizable"


@pytest.mark.parametrize("seed", SEEDS)
def test_three_nodes_with_faults_and_membership(seed: int) -> None:
    _run(Sim(seed))


@pytest.mark.parametrize("seed", list(SEEDS)[:50])
def test_five_nodes_heavy_faults(seed: int) -> None:
    faults = Faults(loss=0.15, dup=0.05, max_delay=5, crash=0.01, partition=0.03)
    _run(Sim(10_000 + seed, nodes=5, spares=0, faults=faults, membership=False))


def test_runs_make_progress() -> None:
    """Guard against a simulator that checks nothing: runs must commit and read."""
    totals = {"ok": 0, "reads": 0}
    for seed in range(5):
        sim = Sim(seed)
        _run(sim)
        totals["ok"] += sim.stats["ok"]
        totals["reads"] += sim.stats["reads"]
    assert totals["ok"] > 50 and totals["reads"] > 30, totals


def test_same_seed_same_run() -> None:
    a, b = Sim(7), Sim(7)
    a.run()
    b.run()
    assert a.history == b.history and a.checker.applied == b.checker.applied

"""Real faults against real node processes, with every history checked (see python -m chaos).

Each test starts the harness as a child process, which puts itself in a private
network and PID namespace, so nothing it does outlives it or reaches the host. The
seed is random unless CHAOS_SEED is set, and is printed with every failure, with
the commands that run it again and re-check the saved history.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chaos.nemesis import KINDS

TESTS = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _chaos(tmp_path: Path, command: str, timeout: float,
           extra: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    seed = os.environ.get("CHAOS_SEED") or str(random.SystemRandom().randrange(1, 2**31))
    out, summary = tmp_path / "run", tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "chaos", command, "--seed", seed, "--out",
                           str(out), "--json", str(summary), *extra], cwd=TESTS, env=env,
                          capture_output=True, text=True, timeout=timeout)
    report = f"seed {seed}\n{done.stdout}\n{done.stderr[-4000:]}"
    if done.returncode not in (0, 1) or not summary.exists():
        pytest.fail(f"the chaos harness itself failed (exit {done.returncode}):\n{report}")
    return report, json.loads(summary.read_text())


def test_each_fault_once_leaves_every_history_correct(tmp_path: Path) -> None:
    report, summary = _chaos(tmp_path, "run", timeout=280)
    assert summary["ok"], report
    assert {row["kind"] for row in summary["faults"]} == {"none", *KINDS}
    assert summary["operations"] > 1000, report


def test_a_paused_leader_answers_its_writes_in_flight_as_they_ended(tmp_path: Path) -> None:
    """A strong write the old leader answers "not done" (421) must not be committed."""
    report, summary = _chaos(tmp_path, "paused-leader", timeout=200)
    assert summary["in_flight_at_pause"] > 0, report
    assert summary["ok"], report


@pytest.mark.long
def test_five_minutes_of_random_faults_leave_every_history_correct(tmp_path: Path) -> None:
    """The default run's longer sibling: faults drawn at random, overlapping the workload
    for five minutes (``scripts/chaos --time 600`` runs longer still)."""
    report, summary = _chaos(tmp_path, "run", timeout=600, extra=("--time", "300"))
    assert summary["ok"], report
    assert summary["operations"] > 10_000, report

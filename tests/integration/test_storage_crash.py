"""Storage survives kill -9 of a writer mid-batch: every acknowledged write is there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from continuum.federation.distributed import storage

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(db: Path, acks_wanted: int) -> list[int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "node_image"), str(ROOT / "tests" / "integration")])}
    script = str(ROOT / "tests/integration/storage_writer.py")
    proc = subprocess.Popen([sys.executable, "-u", script, str(db)], stdout=subprocess.PIPE,
                            env=env, text=True)
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= acks_wanted:
                break
        os.kill(proc.pid, signal.SIGKILL)  # mid-batch: writers are always in flight
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    for round_ in range(3):  # crash the same file repeatedly
        acked = _run_and_kill(db, 300)
        store = storage.DurableStore(db)
        try:
            present = {int(k) for k, _ in store.scan("acked")}  # type: ignore[call-overload]
            missing = [k for k in acked if k not in present]
            assert not missing, f"round {round_}: acknowledged but lost: {missing[:10]}"
            # Atomic batches: both rows of every batch, or neither.
            pairs = {int(k) for k, _ in store.scan("pair")}  # type: ignore[call-overload]
            assert pairs == present
            assert store.commits == 0
        finally:
            store.close()

"""The spec's complete example runs as shipped, against real node processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_complete_example_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples/distributed_federation_example.py")],
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert text.count("'Distributed Systems' (eventual), 'AI Consciousness' (strong)") == 3
    assert "took over and committed a new write" in text
    for stat in ("success rate", "log size", "keys stored", "active peers", "messages sent"):
        assert stat in text

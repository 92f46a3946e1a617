"""The sans-I/O rule: nothing under core/ imports I/O, clocks or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "node_image/continuum/federation/distributed/core"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "datetime", "aiohttp", "sqlite3", "threading",
             "subprocess", "kopf", "kubernetes", "zeroconf", "dns", "os", "selectors"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _global_random_calls(path: Path) -> list[int]:
    """Lines calling ``random.<fn>(...)`` on the module (a seeded ``random.Random`` is fine)."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "random"
                and node.func.attr != "Random"):
            bad.append(node.lineno)
    return bad


def test_core_is_pure() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert files, "no core modules found"
    problems = []
    for f in files:
        bad = _imports(f) & FORBIDDEN
        if bad:
            problems.append(f"{f.relative_to(CORE)} imports {sorted(bad)}")
        lines = _global_random_calls(f)
        if lines:
            problems.append(f"{f.relative_to(CORE)} uses the global random module at {lines}")
    assert not problems, "\n".join(problems)

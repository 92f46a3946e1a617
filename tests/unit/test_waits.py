"""How tests wait: never a fixed sleep where an event or a condition can be awaited, and in
the process-level tests every wait says, on timeout, what it last saw (tests/waiting.py).

A sleep that is the point (a steady client's pace, a fault held for its duration) says
so with a ``# paced:`` comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import astparse

TESTS = Path(__file__).resolve().parents[1]
WAITING = TESTS / "waiting.py"
PROCESS_LEVEL = ("e2e", "integration", "image", "security")


def _sleeps(tree: ast.AST) -> list[tuple[ast.Call, bool]]:
    """Each ``asyncio.sleep``/``time.sleep`` call with a non-zero argument, and whether it
    sits inside a loop."""
    found: list[tuple[ast.Call, bool]] = []

    def visit(node: ast.AST, in_loop: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_loop = False
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "sleep" and isinstance(node.func.value, ast.Name)
                and node.func.value.id in ("asyncio", "time")
                and not (node.args and isinstance(node.args[0], ast.Constant)
                         and node.args[0].value == 0)):
            found.append((node, in_loop))
        for child in ast.iter_child_nodes(node):
            visit(child, in_loop or isinstance(node, ast.While | ast.For | ast.AsyncFor))

    visit(tree, False)
    return found


def _problems() -> list[str]:
    problems = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == WAITING or path == Path(__file__).resolve():
            continue
        lines = path.read_text().splitlines()
        rel = path.relative_to(TESTS)
        process_level = rel.parts[0] in PROCESS_LEVEL
        for call, in_loop in _sleeps(astparse.parse("\n".join(lines), str(path))):
            if "# paced:" in lines[call.lineno - 1]:
                continue
            if not in_loop:
                problems.append(f"{rel}:{call.lineno}: a fixed sleep; await the event or "
                                "condition (tests/waiting.py), or say why with # paced:")
            elif process_level:
                problems.append(f"{rel}:{call.lineno}: a polling loop of its own; use "
                                "waiting.until, which reports what it last saw")
    return problems


def test_tests_wait_on_conditions_and_report_what_they_saw() -> None:
    problems = _problems()
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_fixed_sleep_and_a_silent_poll(tmp_path: Path) -> None:
    code = ("import asyncio\n"
            "async def f():\n"
            "    await asyncio.sleep(1.5)\n"
            "    while True:\n"
            "        await asyncio.sleep(0.1)\n"
            "    await asyncio.sleep(0)\n")
    found = _sleeps(astparse.parse(code))
    assert [(c.lineno, in_loop) for c, in_loop in found] == [(3, False), (5, True)]

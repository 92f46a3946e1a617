"""The package's layers: nothing under core/ imports I/O, clocks or global randomness;
no import circle; each module imports only from its own layer or below."""

from __future__ import annotations

import ast
from pathlib import Path

import astparse

CORE = Path(__file__).resolve().parents[2] / "node_image/continuum/federation/distributed/core"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "datetime", "aiohttp", "sqlite3", "threading",
             "subprocess", "kopf", "kubernetes", "zeroconf", "dns", "os", "selectors"}


def _imports(path: Path) -> set[str]:
    tree = astparse.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _global_random_calls(path: Path) -> list[int]:
    """Lines calling ``random.<fn>(...)`` on the module (a seeded ``random.Random`` is fine)."""
    tree = astparse.parse(path.read_text(), str(path))
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


# The package's layers, bottom up; a module imports only from its own layer or below.
LIBRARY = CORE.parent
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "core", "backup.archive"),
    ("storage", "raft_storage", "transport", "pki", "config", "http_util", "metrics", "client",
     "backup.targets", "backup.s3", "backup.locations"),
    ("statemachine", "raft_loop", "consensus", "coordinator", "discovery", "mesh",
     "replication", "backup.restore"),
    ("concepts", "membership", "duties", "status", "backup.source"),
    ("api", "api_connection", "probes", "server"),
    ("node",),
    ("local", "cli", "__init__", "backup.commands"),
)


def _module_of(path: Path) -> str:
    rel = path.relative_to(LIBRARY).with_suffix("")
    return ".".join(rel.parts)


def _package_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in it (lazy and
    type-checking imports too: each is a dependency all the same)."""
    module = _module_of(path)
    package = module.split(".")[:-1]  # for core/raft/__init__.py too: core.raft
    found: set[str] = set()
    for node in ast.walk(astparse.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        target = [*base, *(node.module.split(".") if node.module else [])]
        for alias in node.names:
            candidate = ".".join([*target, alias.name])
            found.add(candidate if _exists(candidate) else ".".join(target))
    return {m for m in found if m and m != module}


def _exists(module: str) -> bool:
    path = LIBRARY.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_of(p): _package_imports(p) for p in sorted(LIBRARY.rglob("*.py"))}


def _layer(module: str) -> int:
    """A module's layer: its own entry (``backup.source``), else its package's (``core``)."""
    parts = module.split(".")
    for prefix in (".".join(parts[:n]) for n in range(len(parts), 0, -1)):
        for rank, names in enumerate(LAYERS):
            if prefix in names:
                return rank
    raise AssertionError(f"module {module} belongs to no layer: add it to LAYERS")


def test_no_import_circle_in_the_package() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep):], dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep in graph and dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for module in graph:
        if module not in state:
            visit(module)


def test_each_module_imports_only_its_own_layer_or_below() -> None:
    problems = []
    for module, deps in _graph().items():
        if module.endswith("__init__") and module != "__init__":
            continue  # a subpackage's __init__ holds only its docstring
        for dep in sorted(deps):
            if _layer(dep) > _layer(module):
                problems.append(f"{module} (layer {_layer(module)}) imports {dep} "
                                f"(layer {_layer(dep)})")
    assert not problems, "\n".join(problems)


def test_a_long_module_says_why_it_is_one_file() -> None:
    """Over ~600 lines, a module's docstring must say why it stays one file."""
    long_without_reason = []
    operator = CORE.parents[4] / "operator/continuum_operator"
    for f in sorted([*CORE.parent.rglob("*.py"), *operator.rglob("*.py")]):
        text = f.read_text()
        if text.count("\n") > 650:
            doc = ast.get_docstring(astparse.parse(text)) or ""
            if "Why one long file" not in doc:
                long_without_reason.append(f.name)
    assert not long_without_reason, long_without_reason

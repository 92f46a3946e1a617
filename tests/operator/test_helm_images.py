"""The Dockerfile and .dockerignore, checked without a Docker engine (none here, none in CI).

Parses the Dockerfile into stages and checks what `docker build --target node|operator`
would produce: a python:3.11-slim base, a non-root uid the chart and the operator agree on,
no build tools or pip runs in the final stages, entrypoints that exist as console scripts;
and that .dockerignore lets in exactly what the builder COPYs.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from continuum_operator import manifests

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VALUES = ROOT / "helm" / "continuum-federation" / "values.yaml"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a Dockerfile."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1))
            current = stages[m.group(2)] = Stage(m.group(2), base)
        elif current is None:
            assert op == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            current.instructions.append((op, rest))
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())
FINAL = ("node", "operator")


def root_image(stage: Stage) -> str:
    while stage.base in STAGES:
        stage = STAGES[stage.base]
    return stage.base


def test_stages_and_base_images() -> None:
    assert list(STAGES) == ["builder", "runtime", "node", "operator"]
    for name in FINAL:
        assert STAGES[name].base == "runtime", "final stages build on the clean runtime"
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", root_image(STAGES[name]))
    assert root_image(STAGES["builder"]) == root_image(STAGES["node"])  # venv paths hold


BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|gcc|g\+\+|cc|make|build-essential|pip|setup\.py|curl|wget)\b")
# The one pip command allowed after the builder: removing pip itself.
DROP_PIP = "python -m pip uninstall --yes --quiet pip setuptools wheel"


@pytest.mark.parametrize("name", ["runtime", *FINAL])
def test_no_build_tools_or_installs_in_the_runtime_stages(name: str) -> None:
    for cmd in STAGES[name].all("RUN"):
        assert not BUILD_TOOLS.search(cmd.replace(DROP_PIP, "")), f"{name}: {cmd}"
    for copy in STAGES[name].all("COPY"):
        if "--from=" in copy:
            # Only the builder's virtualenv comes across: no wheels, no sources.
            m = re.fullmatch(r"--from=builder (/opt/\w+) (/opt/\w+)", copy)
            assert m and m.group(1) == m.group(2) == f"/opt/{name}", copy
        else:
            pytest.fail(f"{name} copies from the build context: {copy}")


def test_the_builder_builds_the_wheel_from_the_project() -> None:
    runs = re.sub(r"\s+", " ", " ".join(STAGES["builder"].all("RUN")))
    # Dependencies first (their own layer, keyed on pyproject.toml), with the extras the
    # images need; then the project itself.
    assert 'for e in ("operator", "backup")' in runs
    assert "pip wheel --wheel-dir /wheels --requirement /requirements.txt" in runs
    assert "pip wheel --wheel-dir /wheels --no-deps ." in runs
    for venv in FINAL:
        assert f"python -m venv --without-pip /opt/{venv}" in runs  # no pip in the image
        assert f"pip --python /opt/{venv}/bin/python install --no-index" in runs
    # The node image can write backups to object storage (the backup extra).
    assert '--find-links /wheels "continuum-federation[backup]"' in runs
    assert '--find-links /wheels "continuum-federation[operator]"' in runs


def test_the_runtime_base_drops_the_package_installer() -> None:
    runs = " ".join(STAGES["runtime"].all("RUN"))
    assert runs.startswith(DROP_PIP)


@pytest.mark.parametrize("name", FINAL)
def test_final_stages_run_as_the_non_root_uid_everyone_expects(name: str) -> None:
    (user,) = STAGES[name].all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert int(uid) == manifests.NODE_UID  # the operator's node pods run as this uid
    values = yaml.safe_load(VALUES.read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]  # and the chart's pod
    assert gid == uid
    # USER is the last word on identity: nothing after it switches back to root.
    ops = [op for op, _ in STAGES[name].instructions]
    assert "RUN" not in ops[ops.index("USER"):]


@pytest.mark.parametrize(("name", "entrypoint"), [
    ("node", ["continuum-federation", "node", "run"]),
    ("operator", ["continuum-operator"]),
])
def test_entrypoints_are_exec_form_console_scripts_that_exist(
        name: str, entrypoint: list[str]) -> None:
    (raw,) = STAGES[name].all("ENTRYPOINT")
    assert json.loads(raw) == entrypoint  # exec form: signals reach the process (SIGTERM leave)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts[entrypoint[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    env = " ".join(STAGES[name].all("ENV"))
    assert f"PATH=/opt/{name}/bin:$PATH" in env


def test_node_image_matches_what_the_operator_configures() -> None:
    env = " ".join(STAGES["node"].all("ENV"))
    assert f"CONTINUUM_DATA_DIR={manifests.DATA_DIR}" in env
    assert f"CONTINUUM_TLS_DIR={manifests.TLS_DIR}" in env
    (expose,) = STAGES["node"].all("EXPOSE")
    assert sorted(int(p) for p in expose.split()) == sorted(
        [manifests.PEER_PORT, manifests.HEALTH_PORT])
    runtime = " ".join(STAGES["runtime"].all("RUN"))
    assert f"--uid {manifests.NODE_UID}" in runtime
    assert manifests.DATA_DIR in runtime and manifests.TLS_DIR in runtime


# ---- .dockerignore ------------------------------------------------------------------------

def ignore_patterns() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def in_context(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        if any(re.match(regex, p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_admits_what_the_builder_copies_and_nothing_else() -> None:
    patterns = ignore_patterns()
    sources = []
    for copy in STAGES["builder"].all("COPY"):
        sources += copy.split()[:-1]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} is missing from the repository"
        assert in_context(src.rstrip("/"), patterns), f"{src} is excluded by .dockerignore"
    for rel in ("node_image/continuum/federation/distributed/node.py",
                "operator/continuum_operator/spec.py"):
        assert in_context(rel, patterns), rel
    for rel in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bin/helm",
                "helm/continuum-federation/Chart.yaml", "Dockerfile",
                "node_image/continuum/__pycache__/x.cpython-311.pyc", "raft.db"):
        assert not in_context(rel, patterns), f"{rel} would be sent to the build context"

"""``scripts/image``'s own logic, without an engine: which files reach the build context
(Docker's .dockerignore rules), when the content hash changes, and how the machine's pip
configuration is handed to the builder stage."""

from __future__ import annotations

import shutil
import types
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script() -> types.ModuleType:
    loader = SourceFileLoader("scripts_image", str(ROOT / "scripts" / "image"))
    module = types.ModuleType(loader.name)
    module.__file__ = loader.path
    loader.exec_module(module)
    return module


def test_patterns_follow_dockerignore_rules(script: types.ModuleType) -> None:
    star, deep = script._pattern("*"), script._pattern("**/__pycache__")
    assert star.fullmatch("node_image") and not star.fullmatch("node_image/x.py")
    assert deep.fullmatch("__pycache__") and deep.fullmatch("a/b/__pycache__")
    assert not deep.fullmatch("a/__pycache__x")
    assert script._pattern("**/*.py[cod]").fullmatch("a/b/c.pyc")
    assert not script._pattern("**/*.py[cod]").fullmatch("a/c.py")
    negated = script._pattern("x[!a-c]")
    assert negated.fullmatch("xd") and not negated.fullmatch("xb")


def test_the_context_is_the_packages_and_their_metadata(script: types.ModuleType) -> None:
    files = {p.relative_to(ROOT).as_posix() for p in script.context_files()}
    assert {"pyproject.toml", "README.md"} <= files
    tracked = {p.relative_to(ROOT).as_posix() for folder in ("node_image", "operator")
               for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert tracked and tracked <= files
    assert all(f.split("/")[0] in ("pyproject.toml", "README.md", "node_image", "operator")
               for f in files), sorted(files)[:20]
    assert not [f for f in files if "__pycache__" in f or ".egg-info" in f]


def test_the_key_follows_what_the_build_reads(script: types.ModuleType, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "node_image").mkdir()
    (tmp_path / "node_image" / "mod.py").write_text("A = 1\n")
    (tmp_path / "tests").mkdir()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    key = script.source_key("base-1")
    assert script.source_key("base-1") == key
    assert script.source_key("base-2") != key  # another base image
    (tmp_path / "tests" / "test_x.py").write_text("x = 1\n")  # outside the context
    (tmp_path / "node_image" / "__pycache__").mkdir()
    (tmp_path / "node_image" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    assert script.source_key("base-1") == key
    (tmp_path / "node_image" / "mod.py").write_text("A = 2\n")
    changed = script.source_key("base-1")
    assert changed != key
    (tmp_path / "node_image" / "mod.py").chmod(0o755)  # the mode is part of the file
    assert script.source_key("base-1") != changed


def test_the_builder_gets_the_machines_pip_configuration(script: types.ModuleType,
                                                         tmp_path: Path) -> None:
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "mirror" / "wheels"  # inside the index's mount already
    wheels.mkdir()
    cert = tmp_path / "ca.pem"
    cert.write_text("pem")
    listing = "\n".join([
        f"global.cert='{cert}'",
        "global.index-url='https://pypi.example/simple'",
        f"global.extra-index-url='file://{index} file:///nowhere/simple'",
        "global.timeout='10'",
        "install.no-compile='yes'",
        f":env:.find-links='{wheels}'",
        ":env:.timeout='60'",
    ])
    mounts = script.pip_mounts(tmp_path, listing)
    conf = tmp_path / "pip.conf"
    assert mounts == [f"{conf}:/etc/pip.conf:ro", f"{cert}:{cert}:ro",
                      f"{index.parent}:{index.parent}:ro"]
    text = conf.read_text()
    assert "[global]\n" in text and "[install]\nno-compile = yes\n" in text
    assert "timeout = 60\n" in text and "timeout = 10" not in text  # variables win
    assert f"find-links = {wheels}\n" in text
    assert script.pip_mounts(tmp_path, "") == []

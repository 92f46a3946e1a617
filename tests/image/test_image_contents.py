"""What is inside the node and operator images, built from this checkout by ``scripts/image``:
the sources as they are here, a non-root user, no package installer, no compiler, an
entrypoint that starts, and a size within budget."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from image.containers import Container, Images, buildah, image_config

ROOT = Path(__file__).resolve().parents[2]
UID = 10001
# Uncompressed file bytes. The stand-in base (Debian bookworm's python3, as
# python:3.11-slim-bookworm) is about 150 MB of it; the official base is a little smaller.
BUDGET_MB = {"node": 230, "operator": 250}
PACKAGES = {"node": [("node_image/continuum", "continuum")],
            "operator": [("node_image/continuum", "continuum"),
                         ("operator/continuum_operator", "continuum_operator")]}
COMPILER = re.compile(r"^(?:[\w-]+-linux-gnu-)?(?:cc|c\+\+|gcc|g\+\+|cpp|clang|clang\+\+|tcc|ld"
                      r"|as)(?:-[\d.]+)?$")

pytestmark = pytest.mark.timeout(900)  # the first test may build the images


@pytest.fixture(scope="module", params=["node", "operator"])
def image(request: pytest.FixtureRequest, images: Images) -> tuple[str, str]:
    kind: str = request.param
    return kind, getattr(images, kind)


@pytest.fixture(scope="module")
def rootfs(image: tuple[str, str]) -> Iterator[Path]:
    """The image's files, read-only use: a container's root filesystem, mounted."""
    ctr = buildah("from", "--pull-never", image[1])
    try:
        yield Path(buildah("mount", ctr))
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=120)


def _walk(rootfs: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(rootfs):
        if Path(folder) == rootfs:
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        for name in dirs + files:
            yield Path(folder) / name


def _site_packages(rootfs: Path, kind: str) -> Path:
    return next((rootfs / "opt" / kind / "lib").glob("python3*/site-packages"))


def test_the_image_holds_these_sources(image: tuple[str, str], rootfs: Path) -> None:
    kind, _ = image
    site = _site_packages(rootfs, kind)
    for source, installed in PACKAGES[kind]:
        ours = sorted(p.relative_to(ROOT / source) for p in (ROOT / source).rglob("*.py"))
        assert ours
        for rel in ours:
            assert (site / installed / rel).read_bytes() == (ROOT / source / rel).read_bytes(), \
                f"{installed}/{rel} in the {kind} image differs from {source}/{rel}"


def test_it_runs_as_uid_10001_and_cannot_change_its_code(image: tuple[str, str],
                                                         tmp_path: Path) -> None:
    kind, ref = image
    assert image_config(ref).get("User") == f"{UID}:{UID}"
    ctr = Container(ref, f"uid-{kind}", log=tmp_path / "log").create()
    try:
        got = ctr.exec(["-c", "import os; print(os.getuid(), os.getgid(), "
                              f"os.access('/opt/{kind}/lib', os.W_OK))"], entrypoint=["python"])
    finally:
        ctr.remove()
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == [str(UID), str(UID), "False"]


def test_it_has_no_package_installer_and_no_compiler(image: tuple[str, str],
                                                     rootfs: Path, tmp_path: Path) -> None:
    kind, ref = image
    found = []
    for path in _walk(rootfs):
        name, parent = path.name, path.parent.name
        if ((name in ("pip", "ensurepip") and parent in ("site-packages", "dist-packages"))
                or re.match(r"^pip-[\d.]+(\.dist-info|-py3-none-any\.whl)$", name)
                or (parent == "bin" and re.match(r"^pip[\d.]*$", name))
                or (parent == "bin" and COMPILER.match(name))
                or (name == "ensurepip" and (path / "_bundled").exists())):
            found.append(path.relative_to(rootfs).as_posix())
    assert found == [], f"the {kind} image holds a package installer or compiler: {found}"
    ctr = Container(ref, f"nopip-{kind}", log=tmp_path / "log").create()
    try:
        got = ctr.exec(["-m", "pip", "--version"], entrypoint=["python"])
    finally:
        ctr.remove()
    assert got.returncode != 0 and "No module named pip" in got.stderr


def test_the_entrypoint_answers_help(image: tuple[str, str], tmp_path: Path) -> None:
    kind, ref = image
    entrypoint = image_config(ref)["Entrypoint"]
    ctr = Container(ref, f"help-{kind}", log=tmp_path / "log").create()
    try:
        got = ctr.exec(["--help"])
    finally:
        ctr.remove()
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"usage: {' '.join(entrypoint)}"), got.stdout[:200]


def test_its_size_is_within_budget(image: tuple[str, str], rootfs: Path) -> None:
    kind, ref = image
    seen: set[tuple[int, int]] = set()
    size = 0
    for path in _walk(rootfs):
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_size
    mb = size / 1e6
    print(f"\n{kind} image {ref}: {mb:.1f} MB of files (budget {BUDGET_MB[kind]} MB)")
    assert mb <= BUDGET_MB[kind], f"{kind} image is {mb:.1f} MB, over {BUDGET_MB[kind]} MB"

"""The images built by ``scripts/image``, and containers run from them as a runtime would.

Each ``Container`` has its own writable root filesystem over the image (``buildah from``) and
runs the image's entrypoint there with ``buildah run --isolation chroot``: as the image's (or
the pod's) user, with exactly the environment, mounts, hostname and DNS settings given, on the
host network (a pod's ports are then the host's, so each container binds its own loopback
IP). ``buildah run`` ends its child with SIGKILL when it is itself signalled, so signals go
to the container's process, as the kubelet's runtime sends them.

``pod_volume`` lays out a Secret or ConfigMap volume as the kubelet does: the files behind a
``..data`` symlink swapped atomically, with the volume's mode and the pod's fsGroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import waiting

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "image"
# What buildah itself mounts into every container (not written by the process).
RUNTIME_FILES = {"etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv"}


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Images:
    node: str
    operator: str
    key: str
    base: str


def build_images() -> Images:
    """Both images for the sources as they are (``scripts/image`` returns at once when they
    were built already). No engine or tool is a build error, never a reason to skip."""
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "build", "--engine", "buildah",
                               "--json"], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"scripts/image build took over {exc.timeout}s") from None
    if proc.returncode != 0:
        raise ImageBuildError(f"scripts/image build failed:\n{proc.stderr[-6000:]}")
    sys.stderr.write(proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return Images(result["node"], result["operator"], result["key"], result["base"])


def buildah(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config: User, Env, Entrypoint, ExposedPorts, Volumes..."""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))[
        "OCIv1"]["config"]
    return config


@dataclass(frozen=True)
class DNSConfig:
    """What the kubelet writes into a pod's /etc/resolv.conf (dnsPolicy ClusterFirst)."""

    nameserver: str
    searches: tuple[str, ...]
    ndots: int = 5


def cluster_dns(nameserver: str, namespace: str) -> DNSConfig:
    return DNSConfig(nameserver, (f"{namespace}.svc.cluster.local", "svc.cluster.local",
                                  "cluster.local"))


def pod_volume(path: Path, files: dict[str, bytes], *, mode: int, gid: int) -> None:
    """Write (or atomically replace) a Secret/ConfigMap volume's files under ``path``:
    ``<key> -> ..data/<key>``, ``..data -> ..<version>/``, files ``mode`` and group ``gid``."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    version = path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    version.mkdir(mode=0o750)
    os.chown(version, 0, gid)
    for key, data in files.items():
        f = version / key
        f.write_bytes(data)
        os.chown(f, 0, gid)
        f.chmod(mode)
    old = os.readlink(path / "..data") if (path / "..data").is_symlink() else None
    tmp = path / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    tmp.replace(path / "..data")
    for key in files:
        link = path / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    if old is not None:
        shutil.rmtree(path / old, ignore_errors=True)


def owned_dir(path: Path, uid: int, gid: int) -> Path:
    """A volume the pod's user can write (a PVC or emptyDir with fsGroup set)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(0o2770)
    return path


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool = False

    def volume(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _is_buildah(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"buildah")
    except OSError:
        return True


class Container:
    """One container of ``image``: created, run (``start``), signalled, removed."""

    def __init__(self, image: str, name: str, *, env: dict[str, str] | None = None,
                 mounts: Sequence[Mount] = (), user: str | None = None,
                 hostname: str | None = None, dns: DNSConfig | None = None,
                 log: Path) -> None:
        self.image = image
        self.name = name
        self.env = dict(env or {})
        self.mounts = list(mounts)
        self.config = image_config(image)
        self.user = user or self.config.get("User") or "0:0"
        self.hostname = hostname
        self.dns = dns
        self.log = log
        self.id: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def create(self) -> Container:
        args = ["from", "--pull-never", "--name", f"continuum-{self.name}-{uuid.uuid4().hex[:8]}"]
        if self.dns is not None:
            args += ["--dns", self.dns.nameserver, "--dns-option", f"ndots:{self.dns.ndots}"]
            for search in self.dns.searches:
                args += ["--dns-search", search]
        self.id = buildah(*args, self.image)
        # An image VOLUME that a mount covers is the mount's alone, as in a pod. buildah
        # otherwise sets up its own volume there too, and which of the two the process
        # sees varies from run to run (writes then miss the mounted folder).
        covered = {m.target for m in self.mounts} & set(self.config.get("Volumes") or {})
        for target in sorted(covered):
            buildah("config", "--volume", f"{target}-", self.id)
        return self

    def command(self, args: list[str] | None = None, *, entrypoint: list[str] | None = None
                ) -> list[str]:
        """The ``buildah run`` command line for the image's entrypoint plus ``args``."""
        assert self.id is not None, "create() first"
        cmd = ["buildah", "run", "--isolation", "chroot", "--user", self.user]
        if self.hostname:
            cmd += ["--hostname", self.hostname]
        for key, value in self.env.items():
            cmd += ["--env", f"{key}={value}"]
        for mount in self.mounts:
            cmd += ["--volume", mount.volume()]
        ep = (self.config.get("Entrypoint") or []) if entrypoint is None else entrypoint
        return [*cmd, self.id, "--", *ep, *(args or [])]

    def exec(self, args: list[str], *, entrypoint: list[str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run to completion (a one-off command in a fresh process of the container)."""
        return subprocess.run(self.command(args, entrypoint=entrypoint), capture_output=True,
                              text=True, timeout=timeout)

    def start(self, args: list[str] | None = None) -> Container:
        if self.id is None:
            self.create()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(args), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self._pid = None
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self, timeout: float = 30) -> int:
        """The container's process (the entrypoint), found below ``buildah run``: the first
        process running as the container's user that is not buildah's own (its
        ``buildah-chroot-exec`` switches to that user, then starts the entrypoint)."""
        assert self.proc is not None, "start() first"
        uid = int(self.user.split(":")[0])

        def find() -> int | None:
            if self._pid is not None:
                return self._pid
            todo, seen = [self.proc.pid], []
            while todo:
                pid = todo.pop()
                seen.append(pid)
                todo.extend(_children(pid))
            mine = [p for p in seen[1:] if _uid(p) == uid and not _is_buildah(p)]
            if not mine and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: buildah run exited ({self.proc.poll()}) "
                                   f"before a process of uid {uid} ran; log:\n{self.output()}")
            return min(mine) if mine else None  # the first, not a thread-less child it forked

        self._pid = waiting.until_sync(
            find, lambda pid: pid is not None, timeout=timeout,
            what=f"{self.name}: a process of uid {uid} under buildah run")
        return self._pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid(), sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the container's process, as the kubelet does; SIGKILL after
        ``timeout`` (the grace period). The exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, RuntimeError):
                self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, RuntimeError):
                os.kill(self.pid(timeout=1), signal.SIGKILL)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def writes(self) -> list[str]:
        """Files the container wrote into its own root filesystem, outside its mounts:
        none, for a pod whose root filesystem is read-only."""
        assert self.id is not None
        upper = Path(buildah("mount", self.id)).parent / "diff"
        try:
            targets = {m.target.strip("/") for m in self.mounts}
            found = []
            for folder, _, names in os.walk(upper):
                for name in names:
                    rel = (Path(folder) / name).relative_to(upper).as_posix()
                    if rel not in targets and rel not in RUNTIME_FILES:
                        found.append(rel)
            return sorted(found)
        finally:
            buildah("umount", self.id)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def remove(self) -> None:
        self.kill()
        if self.id is not None:
            subprocess.run(["buildah", "rm", self.id], capture_output=True, timeout=120)
            self.id = None

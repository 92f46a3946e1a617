"""``continuum-federation local up`` as the user runs it: the real console script, real
node processes, signals, and a second run of the same directory with more nodes."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import waiting
from continuum.federation.distributed import client

CLI = Path(sys.executable).with_name("continuum-federation")


class LocalUp:
    """One ``local up`` process; its stdout is read line by line as it comes."""

    def __init__(self, data_dir: Path, nodes: int, first_ip: str, *extra: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [str(CLI), "local", "up", "--nodes", str(nodes), "--first-ip", first_ip,
             "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"local up exited before printing {text!r}: "
                                     f"{''.join(self.lines)}{self.stderr()}")
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout}s: {''.join(self.lines)}")

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return rc

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs() -> Iterator[list[LocalUp]]:
    started: list[LocalUp] = []
    yield started
    for run in started:  # a failed test must not leave a cluster behind
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            try:
                run.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.kill()


def _listening(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((ip, port)) == 0


def _nodes_file(data_dir: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((data_dir / "nodes.json").read_text())
    return entries


def _assert_stopped_cleanly(run: LocalUp, ids: list[str]) -> None:
    assert "stopped" in run.output.splitlines()[-1]
    for entry in _nodes_file(run.data_dir):
        if entry["id"] in ids:
            host = entry["health"].removeprefix("http://").split(":")[0]
            assert not _listening(host, 8080) and not _listening(host, 7000), entry
            log = (run.data_dir / "logs" / f"{entry['id']}.log").read_text()
            # the node ran its graceful stop to the end (SIGTERM, not SIGKILL)
            assert log.rstrip().splitlines()[-1].endswith(f"node {entry['id']} stopped"), log[-500:]


def test_exit_when_ready_writes_nodes_json_and_stops(tmp_path: Path,
                                                     runs: list[LocalUp]) -> None:
    d = tmp_path / "up"
    run = LocalUp(d, 3, "127.0.113.21", "--exit-when-ready")
    runs.append(run)
    assert run.finish(timeout=120) == 0, run.output + run.stderr()
    assert "cluster ready in" in run.output
    entries = _nodes_file(d)
    assert entries == [{"id": f"node-{i}", "api": f"https://127.0.113.{20 + i}:7000",
                        "health": f"http://127.0.113.{20 + i}:8080"} for i in (1, 2, 3)]
    for name in ("ca.crt", "client.crt", "client.key"):
        assert (d / "pki" / name).is_file()
    assert (d / "pki" / "client.key").stat().st_mode & 0o077 == 0
    _assert_stopped_cleanly(run, ["node-1", "node-2", "node-3"])


@pytest.mark.parametrize(("sig", "first_ip"), [(signal.SIGINT, "127.0.113.31"),
                                               (signal.SIGTERM, "127.0.113.41"),
                                               (signal.SIGHUP, "127.0.113.81")])
def test_a_signal_stops_the_running_cluster(sig: int, first_ip: str, tmp_path: Path,
                                            runs: list[LocalUp]) -> None:
    run = LocalUp(tmp_path / "up", 3, first_ip)
    runs.append(run)
    run.wait_line("cluster ready in", 120)
    run.wait_line("node-3", 30)  # the status table (stdout is not a terminal: printed plainly)
    # The printed hint works as typed, from anywhere (program path and --data-dir included).
    hint = next(line for line in run.lines if line.startswith("try: "))
    done = subprocess.run(["bash", "-c", hint.removeprefix("try: ")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Raft" in done.stdout, (hint, done.stdout, done.stderr)
    run.proc.send_signal(sig)
    assert run.finish() == 0, run.output
    _assert_stopped_cleanly(run, ["node-1", "node-2", "node-3"])


def test_nodes_are_stopped_even_when_stdout_is_gone(tmp_path: Path) -> None:
    """A reader that went away (``| head``, a closed terminal) makes our last prints fail;
    the nodes, in sessions of their own, must be stopped all the same."""
    proc = subprocess.Popen(
        [str(CLI), "local", "up", "--nodes", "3", "--first-ip", "127.0.113.71",
         "--data-dir", str(tmp_path / "up")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "cluster ready in" in line:
                break
        proc.stdout.close()
        # Each node answers as soon as it is up; "ready" may come first on a busy machine.
        waiting.until_sync(lambda: {i: _listening(f"127.0.113.{70 + i}", 8080) for i in (1, 2, 3)},
                           lambda up: all(up.values()), timeout=30,
                           what="every node's health port (node: listening)")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for i in (1, 2, 3):
        assert not _listening(f"127.0.113.{70 + i}", 8080), f"node-{i} outlived local up"


def test_a_signal_while_waiting_for_ready_stops_at_once(tmp_path: Path,
                                                        runs: list[LocalUp]) -> None:
    run = LocalUp(tmp_path / "up", 3, "127.0.113.51")
    runs.append(run)
    run.wait_line("starting 3 nodes", 60)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, run.output
    assert "cluster ready" not in run.output
    assert "interrupted before the cluster was ready" in run.stderr()
    for i in (1, 2, 3):
        assert not _listening(f"127.0.113.{50 + i}", 8080)


async def _statuses(d: Path) -> dict[str, dict[str, Any]]:
    nodes, files = client.local_cluster(d)
    out = {}
    for entry in nodes:
        async with client.ApiClient(entry["api"], files, timeout=5) as c:
            out[entry["id"]] = await c.status()
    return out


async def _eventually(check: Any, timeout: float, what: str) -> Any:
    return await waiting.until(check, timeout=timeout, what=what, interval=0.2,
                               errors=(Exception,))


async def test_a_second_run_with_more_nodes_grows_the_cluster(tmp_path: Path,
                                                              runs: list[LocalUp]) -> None:
    d = tmp_path / "grow"
    loop = asyncio.get_running_loop()
    first = LocalUp(d, 3, "127.0.113.61")
    runs.append(first)
    await loop.run_in_executor(None, first.wait_line, "cluster ready in", 120)
    nodes, files = client.local_cluster(d)
    urls = [n["api"] for n in nodes]
    await client.first_reachable(urls, files, lambda c: c.put("old-s", {"n": 1}, strong=True))
    await client.first_reachable(urls, files, lambda c: c.put("old-e", {"n": 2}))
    first.proc.send_signal(signal.SIGINT)
    assert await loop.run_in_executor(None, first.finish) == 0

    second = LocalUp(d, 5, "127.0.113.61")
    runs.append(second)
    await loop.run_in_executor(None, second.wait_line, "cluster ready in", 240)
    assert "adding node-4" in second.output and "adding node-5" in second.output
    st = await _statuses(d)
    ids = [f"node-{i}" for i in range(1, 6)]
    assert sorted(st) == ids
    assert all(s["ready"] for s in st.values())
    assert len({s["leader_id"] for s in st.values()}) == 1
    leader = st[next(iter(st.values()))["leader_id"]]
    assert sorted(m["id"] for m in leader["members"] if m["voter"]) == ids
    assert json.loads((d / "members.json").read_text()) == {"members": ids}

    node5 = next(n["api"] for n in client.local_cluster(d)[0] if n["id"] == "node-5")

    async def old_data_on_new_node() -> bool:
        async with client.ApiClient(node5, files) as c:
            return bool((await c.get("old-s"))["value"] == {"n": 1}
                        and (await c.get("old-e"))["value"] == {"n": 2})

    await _eventually(old_data_on_new_node, 60, "the 3-node cluster's data on node-5")
    second.proc.send_signal(signal.SIGINT)
    assert await loop.run_in_executor(None, second.finish) == 0, second.output
    _assert_stopped_cleanly(second, ids)

    # fewer nodes than members: refused in one line, nothing started or changed
    shrink = LocalUp(d, 3, "127.0.113.61", "--exit-when-ready")
    runs.append(shrink)
    assert await loop.run_in_executor(None, shrink.finish) == 1
    err = shrink.stderr().strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "--nodes 5" in err and f"remove {d}" in err
    assert "stopping" not in shrink.output
    assert json.loads((d / "members.json").read_text()) == {"members": ids}

    # and the grown cluster starts again as five members
    again = LocalUp(d, 5, "127.0.113.61", "--exit-when-ready")
    runs.append(again)
    assert await loop.run_in_executor(None, again.finish, 120) == 0, again.output
    assert "adding" not in again.output

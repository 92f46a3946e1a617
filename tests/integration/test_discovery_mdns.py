"""mDNS discovery between real processes on loopback, verified over mutual TLS.

Each child process runs a NodeDiscovery with mDNS only, announces itself on
127.0.0.1 and prints ``up <id>`` / ``down <id>`` as verified peers come and go.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from continuum.federation.distributed import pki

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, node_id: str) -> None:
        self.proc = proc
        self.node_id = node_id
        self.lines: list[str] = []

    async def expect(self, line: str, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while line not in self.lines:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"{self.node_id} exited; saw {self.lines}")
                self.lines.append(raw.decode().strip())


async def spawn(node_id: str, cluster: str, certs: Path) -> Child:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "node_image"),
                                                        str(ROOT / "tests")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), node_id, cluster, str(certs), env=env,
        stdout=asyncio.subprocess.PIPE)
    return Child(proc, node_id)


async def test_two_processes_find_each_other_by_mdns(tmp_path: Path) -> None:
    ca = pki.create_ca()
    for n in ("node-a", "node-b", "node-x"):
        pki.write_secret_dir(tmp_path / n, pki.issue_node(ca, n), ca.cert_pem)
    cluster = f"mdns-{uuid.uuid4().hex[:8]}"  # private to this run: no cross-talk
    children = [await spawn("node-a", cluster, tmp_path / "node-a"),
                await spawn("node-b", cluster, tmp_path / "node-b"),
                await spawn("node-x", cluster + "-other", tmp_path / "node-x")]
    a, b, _ = children
    try:
        for c in children:
            await c.expect("ready")
        await a.expect("up node-b")
        await b.expect("up node-a")
        b.proc.send_signal(signal.SIGTERM)  # graceful stop sends an mDNS goodbye
        assert await asyncio.wait_for(b.proc.wait(), 30) == 0
        await a.expect("down node-b")
        assert not any("node-x" in line for line in a.lines)  # another cluster: ignored
    finally:
        for c in children:
            if c.proc.returncode is None:
                c.proc.kill()
                await c.proc.wait()


async def _child(node_id: str, cluster: str, certs: Path) -> None:
    from continuum.federation.distributed import discovery

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {node_id} %(name)s %(message)s")

    config = discovery.DiscoveryConfig(
        enabled_methods={discovery.DiscoveryMethod.MDNS}, cluster_name=cluster,
        mdns_interfaces=["127.0.0.1"], discovery_interval_seconds=30.0)
    node = discovery.NodeDiscovery(node_id, config, bind_address="127.0.0.1:0",
                                   tls_cert=str(certs / "tls.crt"), tls_key=str(certs / "tls.key"),
                                   tls_ca=str(certs / "ca.crt"))
    node.register_discovery_callback(lambda kind, n: print(kind, n.node_id, flush=True))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await node.start()
    print("ready", flush=True)
    await stop.wait()
    faulthandler.dump_traceback_later(20)  # if stopping hangs, the test log shows where
    log.info("%s stopping", node_id)
    watchdog = asyncio.get_running_loop().call_later(10, _dump_tasks)
    await node.stop()
    watchdog.cancel()
    log.info("%s stopped", node_id)


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2], Path(sys.argv[3])))

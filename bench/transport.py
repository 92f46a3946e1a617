"""Peer transport round trips over mutual TLS vs plain HTTP, on loopback.

A server process answers ``echo`` calls; this process drives closed-loop
calls at concurrency 1 and 16 and prints calls/s and p50/p99 latency for
mutual TLS and plain HTTP in the same run, and the TLS overhead ratio.

Run: .venv/bin/python bench/transport.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "node_image"))

from continuum.federation.distributed import pki  # noqa: E402
from continuum.federation.distributed.transport import peer, tls  # noqa: E402


async def serve(node_dir: str | None, address: str) -> None:
    files = tls.TLSFiles.from_dir(node_dir) if node_dir else None
    t = peer.PeerTransport("server", address, files, insecure=files is None)
    t.on("echo", lambda sender, body: body)
    await t.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await t.stop()


async def drive(client_dir: str | None, address: str, concurrency: int, seconds: float
                ) -> tuple[float, float, float]:
    files = tls.TLSFiles.from_dir(client_dir) if client_dir else None
    t = peer.PeerTransport("client", None, files, insecure=files is None)
    await t.start()
    body = {"payload": b"x" * 100}
    for _ in range(50):  # warm up connections
        await t.request(address, "echo", body)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await t.request(address, "echo", body)
            latencies.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await t.stop()
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--serve", nargs=2, metavar=("DIR", "ADDR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(None if args.serve[0] == "-" else args.serve[0], args.serve[1]))
        return
    with tempfile.TemporaryDirectory() as d:
        ca = pki.init_ca(Path(d) / "ca")
        pki.write_secret_dir(Path(d) / "server", pki.issue_node(ca, "server",
                             ip_addresses=["127.0.0.1"]), ca.cert_pem)
        pki.write_secret_dir(Path(d) / "client", pki.issue_node(ca, "client"), ca.cert_pem)
        results: dict[tuple[str, int], tuple[float, float, float]] = {}
        for mode, port in (("mtls", 17501), ("plain", 17502)):
            addr = f"127.0.0.1:{port}"
            server_dir = str(Path(d) / "server") if mode == "mtls" else "-"
            proc = subprocess.Popen([sys.executable, __file__, "--serve", server_dir, addr],
                                    stdout=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                proc.stdout.readline()
                for conc in (1, 16):
                    client_dir = str(Path(d) / "client") if mode == "mtls" else None
                    results[(mode, conc)] = asyncio.run(drive(client_dir, addr, conc,
                                                              args.seconds))
            finally:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
    print(f"{'mode':<6} {'conc':>4} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for (mode, conc), (rate, p50, p99) in results.items():
        print(f"{mode:<6} {conc:>4} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f}")
    for conc in (1, 16):
        ratio = results[("mtls", conc)][0] / results[("plain", conc)][0]
        print(f"concurrency {conc}: mTLS throughput = {ratio:.2f}x plain HTTP")


if __name__ == "__main__":
    main()

"""FederationNode: one process of the federation, serving peers and clients.

It owns the asyncio shell of every component and one mutual-TLS listener
shared by the peer protocol and the HTTP API, plus a plain listener for
``/healthz``, ``/readyz`` and ``/metrics``. Start order: transport,
storage-backed components, then the listeners; stop order is the reverse
with a graceful hand-over first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from aiohttp import web

from . import api, config, health
from .transport import peer, tls

log = logging.getLogger(__name__)

PEER_PING_INTERVAL = 1.0


class FederationNode:
    def __init__(self, settings: config.NodeSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.tls_files = tls.TLSFiles.from_dir(settings.tls_dir)
        self.transport = peer.PeerTransport(
            settings.node_id, None, self.tls_files, peer_domain=settings.peer_domain
        )
        self.started_at = time.monotonic()
        self.reachable: dict[str, bool] = {}
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.transport.start()
        app = web.Application(client_max_size=self.transport.limits.max_frame_bytes)
        self.transport.mount(app)
        api.mount(app, self)
        await self._listen(app, self.settings.bind_address, self.transport.server_ssl_context)
        await self._listen(health.app(self), self.settings.health_address, None)
        self._tasks.append(asyncio.create_task(self._ping_peers(), name="ping-peers"))
        log.info("node %s serving peers and API on %s (mTLS), health on %s", self.node_id,
                 self.settings.bind_address, self.settings.health_address)

    async def _listen(self, app: web.Application, address: str, ssl_ctx: Any) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = peer.split_address(address)
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_address=True).start()
        self._runners.append(runner)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(self._runners):
            await runner.cleanup()
        await self.transport.stop()
        log.info("node %s stopped", self.node_id)

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("node %s shutting down", self.node_id)
        await self.stop()

    # -- peers -----------------------------------------------------------------------------

    def peer_addresses(self) -> dict[str, str]:
        return {k: v for k, v in self.settings.initial_members.items() if k != self.node_id}

    async def _ping_peers(self) -> None:
        while True:
            peers = self.peer_addresses()
            results = await asyncio.gather(
                *(self.transport.request(addr, "peer.ping", {}, timeout=2, expect=pid)
                  for pid, addr in peers.items()),
                return_exceptions=True,
            )
            for pid, result in zip(peers, results, strict=True):
                self.reachable[pid] = not isinstance(result, BaseException)
            await asyncio.sleep(PEER_PING_INTERVAL)

    # -- views -----------------------------------------------------------------------------

    def is_ready(self) -> bool:
        peers = self.peer_addresses()
        return all(self.reachable.get(p, False) for p in peers)

    def status(self) -> dict[str, Any]:
        members = [{"id": self.node_id, "address": self.settings.peer_address, "voter": True,
                    "healthy": True}]
        for pid, addr in sorted(self.peer_addresses().items()):
            members.append({"id": pid, "address": addr, "voter": True,
                            "healthy": self.reachable.get(pid, False)})
        return {
            "node_id": self.node_id,
            "cluster": self.settings.cluster_name,
            "ready": self.is_ready(),
            "members": members,
            "transport": dict(self.transport.stats),
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
        }

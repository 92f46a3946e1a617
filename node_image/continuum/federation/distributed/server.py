"""The node's two listeners: the mutual-TLS port (peer protocol and API) and the plain
port (probes and metrics)."""

from __future__ import annotations

import ssl

from aiohttp import web

from . import api
from .transport import peer

# In-flight requests get this long to finish on shutdown, then are cancelled: one waiting
# on a quorum that is shutting down too must not hold the process past its grace period.
REQUEST_GRACE_SECONDS = 2.0


class NodeServer:
    def __init__(self, transport: peer.PeerTransport, services: api.Services,
                 probes_app: web.Application) -> None:
        self._transport = transport
        self._services = services
        self._probes = probes_app
        self._runners: list[web.AppRunner] = []

    async def start(self, bind_address: str, health_address: str) -> None:
        app = web.Application(client_max_size=self._transport.limits.max_frame_bytes)
        self._transport.mount(app)
        api.mount(app, self._services)
        await self._listen(app, bind_address, self._transport.server_ssl_context)
        await self._listen(self._probes, health_address, None)

    async def _listen(self, app: web.Application, address: str,
                      ssl_ctx: ssl.SSLContext | None) -> None:
        # keepalive_timeout is also the time a connection gets to deliver a request's
        # headers (aiohttp closes one still waiting for them): no slowloris.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=REQUEST_GRACE_SECONDS,
                               keepalive_timeout=self._transport.limits.read_timeout)
        await runner.setup()
        host, port = peer.split_address(address)
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_address=True).start()
        self._runners.append(runner)

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []

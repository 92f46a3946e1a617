"""The node's two listeners: the mutual-TLS port (peer protocol and API) and the plain
port (probes and metrics).

On the mutual-TLS port a connection starts with ``api_connection``'s protocol, which
serves plain concept requests itself and hands everything else to aiohttp."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import api, api_connection
from .transport import peer

# In-flight requests get this long to finish on shutdown, then are cancelled: one waiting
# on a quorum that is shutting down too must not hold the process past its grace period.
REQUEST_GRACE_SECONDS = 2.0


class NodeServer:
    def __init__(self, transport: peer.PeerTransport, services: api.Services,
                 probes_app: web.Application, *, fast_path: bool = True) -> None:
        self._transport = transport
        self._fast_path = fast_path
        self._services = services
        self._probes = probes_app
        self._runners: list[web.AppRunner] = []
        self._api_listener: asyncio.Server | None = None
        self._concepts: api_connection.ConceptServer | None = None

    async def start(self, bind_address: str, health_address: str) -> None:
        app = web.Application(client_max_size=self._transport.limits.max_frame_bytes)
        self._transport.mount(app)
        api.mount(app, self._services)
        host, port = peer.split_address(bind_address)
        runner = await self._runner(app)
        if self._fast_path:
            self._api_listener, self._concepts = await api_connection.listen(
                self._services, runner, host, port, self._transport.server_ssl_context)
        else:
            await web.TCPSite(runner, host, port, ssl_context=self._transport.server_ssl_context,
                              reuse_address=True).start()
        probes = await self._runner(self._probes)
        host, port = peer.split_address(health_address)
        await web.TCPSite(probes, host, port, reuse_address=True).start()

    async def _runner(self, app: web.Application) -> web.AppRunner:
        # keepalive_timeout is also the time a connection gets to deliver a request's
        # headers (aiohttp closes one still waiting for them): no slowloris.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=REQUEST_GRACE_SECONDS,
                               keepalive_timeout=self._transport.limits.read_timeout)
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def stop(self) -> None:
        if self._api_listener is not None:
            self._api_listener.close()  # no new connections; the open ones below
            self._api_listener = None
        # Both kinds of connection get the same grace period, side by side.
        closing = [runner.cleanup() for runner in reversed(self._runners)]
        if self._concepts is not None:
            closing.append(self._concepts.shutdown(REQUEST_GRACE_SECONDS))
            self._concepts = None
        self._runners = []
        await asyncio.gather(*closing)

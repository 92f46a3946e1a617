"""Liveness of the peer transport over real TLS sockets on loopback: dead connections
are noticed, silent peers cost a timeout and never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import waiting
from conftest import TestPKI
from continuum.federation.distributed.transport import peer, tls

LIVELY = peer.TransportLimits(stream_heartbeat=0.5, stream_idle_timeout=1.5)


async def wait_for(pred: Any, stats: dict[str, int], timeout: float = 10.0) -> None:
    """Poll ``pred`` (a counter the transport bumps; no event exists) with a deadline; on
    timeout, show the transport's counters."""
    await waiting.until(lambda: (pred(), dict(stats)), lambda seen: seen[0], timeout=timeout,
                        interval=0.02, what="the transport's counters to move")


class FreezableProxy:
    """A TCP relay; ``freeze()`` makes every open connection a black hole that stays
    open (a peer whose host died, or a stuck middlebox), while new connections relay."""

    def __init__(self, target: str) -> None:
        self.target = peer.split_address(target)
        self.frozen: list[asyncio.Event] = []  # one per connection: set = relaying stops
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def freeze(self) -> None:
        for ev in self.frozen:
            ev.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        frozen = asyncio.Event()
        self.frozen.append(frozen)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while not frozen.is_set():
                data = await src.read(65536)
                if not data or frozen.is_set():
                    break
                dst.write(data)
                await dst.drain()
            await asyncio.Event().wait()  # hold the connection open, relay nothing

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


@pytest.fixture
async def pair(cluster_pki: TestPKI) -> AsyncIterator[tuple[peer.PeerTransport,
                                                              peer.PeerTransport]]:
    server = peer.PeerTransport("n2", "127.0.0.1:0", cluster_pki.node("n2"), limits=LIVELY)
    client = peer.PeerTransport("n1", None, cluster_pki.node("n1"), limits=LIVELY)
    await server.start()
    await client.start()
    yield server, client
    await client.stop()
    await server.stop()


async def test_a_stream_into_a_dead_connection_is_noticed_and_replaced(
        pair: tuple[peer.PeerTransport, peer.PeerTransport]) -> None:
    server, client = pair
    got: asyncio.Queue[int] = asyncio.Queue()
    server.on("note", lambda sender, body: got.put_nowait(body["i"]))
    proxy = FreezableProxy(server.address or "")
    await proxy.start()
    try:
        assert client.send(proxy.address, "note", {"i": 1})
        assert await asyncio.wait_for(got.get(), 10) == 1
        proxy.freeze()
        # No pong comes back through the black hole: the client gives the stream up
        # (rather than writing into it forever) ...
        await wait_for(lambda: client.stats["streams_lost"] == 1, client.stats,
                       5 * LIVELY.stream_heartbeat)
        # ... and the next message goes over a new connection.
        assert client.send(proxy.address, "note", {"i": 2})
        assert await asyncio.wait_for(got.get(), 10) == 2
    finally:
        await proxy.stop()


async def test_the_server_closes_silent_streams_but_not_heartbeating_ones(
        pair: tuple[peer.PeerTransport, peer.PeerTransport], cluster_pki: TestPKI) -> None:
    server, client = pair
    got: asyncio.Queue[int] = asyncio.Queue()
    server.on("note", lambda sender, body: got.put_nowait(body["i"]))
    assert client.send(server.address or "", "note", {"i": 1})
    assert await asyncio.wait_for(got.get(), 10) == 1
    files = cluster_pki.node("n3")
    ctx = tls.client_context(files)
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"https://{server.address}{peer.STREAM_PATH}", ssl=ctx, heartbeat=None
    ) as silent:
        # Says nothing, not even a ping: closed once the idle timeout passes.
        msg = await silent.receive(timeout=10 * LIVELY.stream_idle_timeout)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert silent.close_code == aiohttp.WSCloseCode.GOING_AWAY and msg.extra == "idle"
    assert server.stats["streams_idle_closed"] == 1
    # Our client's stream was idle at least as long, but its pings kept it open.
    assert client.stats["streams_lost"] == 0
    await wait_for(lambda: len(server._streams) == 1,  # once the closing handshake is done
                   server.stats)
    assert client.send(server.address or "", "note", {"i": 2})
    assert await asyncio.wait_for(got.get(), 10) == 2
    assert client.stats["streams_lost"] == 0


@pytest.mark.parametrize("answers", ["tcp_only", "tls_then_nothing"])
async def test_a_peer_that_accepts_but_never_answers_costs_a_timeout(
        answers: str, cluster_pki: TestPKI) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # take whatever comes, answer nothing, until hung up

    ssl_ctx = tls.server_context(cluster_pki.node("n2")) if answers != "tcp_only" else None
    srv = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=ssl_ctx)
    address = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    limits = peer.TransportLimits(connect_timeout=0.5, request_timeout=1.0, send_timeout=1.0)
    client = peer.PeerTransport("n1", None, cluster_pki.node("n1"), limits=limits)
    await client.start()
    try:
        async with asyncio.timeout(10):  # a hang fails here instead of stalling the run
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(peer.PeerError):
                await client.request(address, "echo", {})
            assert loop.time() - start < 3 * limits.request_timeout
            assert client.send(address, "note", {"i": 1})
            await wait_for(lambda: client.stats["send_failures"] == 1, client.stats)
            assert client.stats["messages_dropped"] == 1
        assert held  # it did accept: the timeouts, not a refusal, ended both
    finally:
        async with asyncio.timeout(10):
            await client.stop()
        srv.close()
        for w in held:
            w.close()


_SENDER = """
import asyncio, sys
from continuum.federation.distributed.transport import peer, tls

async def main() -> None:
    t = peer.PeerTransport("n4", None, tls.TLSFiles(*sys.argv[1:4]))
    await t.start()
    t.send(sys.argv[4], "note", {})
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_peer_whose_process_dies_is_reported_lost_and_one_that_stops_is_not(
        pair: tuple[peer.PeerTransport, peer.PeerTransport], cluster_pki: TestPKI) -> None:
    server, client = pair
    lost: list[str] = []
    server.on_peer_lost(lost.append)
    heard: asyncio.Queue[str] = asyncio.Queue()
    server.on("note", lambda sender, body: heard.put_nowait(sender))
    assert client.send(server.address or "", "note", {})
    assert await asyncio.wait_for(heard.get(), 10) == "n1"
    await client.stop()  # a goodbye: its stream ends with a close frame
    await wait_for(lambda: not server._streams, server.stats)
    files = cluster_pki.node("n4")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SENDER, files.cert, files.key, files.ca, server.address or "")
    try:
        assert await asyncio.wait_for(heard.get(), 30) == "n4"
        assert lost == []
    finally:
        proc.kill()
        await proc.wait()
    await wait_for(lambda: lost == ["n4"], server.stats)  # no goodbye: the process died
    assert server.stats["peers_lost"] == 1

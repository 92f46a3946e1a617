"""The peer transport: an aiohttp server and a pooled client over mutual TLS.

Two ways to talk to a peer:

* ``send(address, kind, body)``: one-way and queued. Messages to one address
  wait in a bounded outbox; one sender task per address drains it into
  frames of up to ``max_batch`` messages written to a long-lived WebSocket
  (``/peer/v1/stream``), so a busy link batches by itself, frames are
  pipelined without waiting for a reply, and a slow or dead peer costs a
  bounded amount of memory (a full outbox drops the newest message and
  counts it; every protocol above tolerates loss). Messages to one address
  are delivered in the order sent, except that ``urgent`` ones (liveness:
  heartbeats, votes) go ahead of ordinary ones still queued. The client pings every
  ``stream_heartbeat`` seconds and drops a stream whose pong does not come
  within half that (a dead peer behind a live TCP connection is noticed, not
  written into forever); the server closes a stream on which nothing, not even
  a ping, arrived for ``stream_idle_timeout``.
* ``await request(address, kind, body)``: one call, one reply, with a
  timeout; raises ``PeerError`` on failure.

Handlers are registered per message kind with ``on(kind, handler)``; a
handler gets ``(sender, body)`` and, for calls, returns the reply body.
``on_peer_lost(callback)`` hears of a peer whose stream to us ended without a
goodbye (reset, or closed without a close frame): usually a process that died.

Every frame's sender must be a DNS name of the TLS client certificate, the
certificate must carry the node role, and its fingerprint must not be revoked
(``set_revoked``: the cluster's denylist, replicated through Raft); otherwise the
frame is refused (403) before any handler runs, and a stream whose certificate
is revoked later is closed. Whether a node that passes may speak a given
protocol (is it a member?) is for the protocols' cores to decide. Malformed,
truncated, oversized and wrong-version frames get a 4xx with a JSON error and
change nothing; a body that does not arrive within ``read_timeout`` gets 408.

Why one long file: both ends of one wire protocol (client pool and outboxes,
server and its checks of identity, revocation and frames) share its limits,
counters and error answers; apart, each half would restate the other's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from . import tls, wire

log = logging.getLogger(__name__)

Reply = dict[str, Any] | None
Handler = Callable[[str, dict[str, Any]], Awaitable[Reply] | Reply]

STREAM_PATH = "/peer/v1/stream"
CALL_PATH = "/peer/v1/call"
FRAME_CONTENT_TYPE = "application/x-msgpack"
_MAX_TRACKED = 10_000  # node ids whose certificates we remember (for revoking on removal)


class PeerError(ConnectionError):
    """A call to a peer failed: unreachable, timed out, refused or answered with an error."""

    def __init__(self, address: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{address}: {message}")
        self.address = address
        self.status = status


@dataclass(frozen=True, slots=True)
class TransportLimits:
    max_frame_bytes: int = wire.DEFAULT_MAX_FRAME_BYTES
    connect_timeout: float = 1.0  # seconds to open a TCP+TLS connection
    request_timeout: float = 5.0  # seconds for a whole call, reply included
    send_timeout: float = 5.0  # seconds for one batch POST
    outbox_size: int = 10_000  # queued one-way messages per peer address
    max_batch: int = 1024  # messages per frame
    connections_per_peer: int = 8
    # Pooled call connections idle longer than this are closed: each holds TLS buffers of a
    # few hundred KiB, and calls other than the coordinator's health checks (every few
    # seconds) are rare enough to pay a handshake.
    keepalive_seconds: float = 10.0
    # Seconds between a stream client's pings. A node in a mesh of N holds up to 2(N-1)
    # streams, and each ping wakes both ends twice: at 5 s they were two thirds of an idle
    # N=30 member's CPU (bench/gossip.py). A process that dies resets its streams at once;
    # the ping is for a host that vanished, and SWIM and Raft notice that on their own.
    stream_heartbeat: float = 15.0
    stream_idle_timeout: float = 45.0  # server: close a stream silent this long
    # Server: the whole of a request's headers (and the next request's, on a kept-alive
    # connection) must arrive within this many seconds, and its body too: a client that
    # trickles bytes (slowloris) loses its connection instead of holding it forever.
    read_timeout: float = 20.0

    def __post_init__(self) -> None:
        if self.outbox_size < 1 or self.max_batch < 1 or self.connections_per_peer < 1:
            raise ValueError("outbox_size, max_batch and connections_per_peer must be positive")
        if min(self.connect_timeout, self.request_timeout, self.send_timeout,
               self.stream_heartbeat, self.stream_idle_timeout, self.read_timeout,
               self.keepalive_seconds) <= 0:
            raise ValueError("timeouts must be positive")
        if self.stream_idle_timeout <= self.stream_heartbeat:
            # A live client's pings must reach the server before it gives up on the stream.
            raise ValueError("stream_idle_timeout must exceed stream_heartbeat")


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) into host and port, with a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host.strip("[]"), int(port)


class _Outbox:
    __slots__ = ("event", "idle", "queue", "task", "urgent")

    def __init__(self) -> None:
        self.queue: deque[wire.Message] = deque()
        self.urgent: deque[wire.Message] = deque()  # sent before anything in queue
        self.event = asyncio.Event()
        self.idle = asyncio.Event()  # nothing queued and nothing being written
        self.idle.set()
        self.task: asyncio.Task[None] | None = None


class PeerTransport:
    def __init__(
        self,
        node_id: str,
        bind_address: str | None = None,
        tls_files: tls.TLSFiles | None = None,
        *,
        peer_domain: str | None = None,
        limits: TransportLimits | None = None,
        insecure: bool = False,
        wildcard: bool = False,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if tls_files is None and not insecure:
            raise tls.TLSConfigError(
                "TLS certificate, key and CA are required (insecure=True is for local "
                f"benchmarks). {tls.WHAT_TO_PASS}")
        if bind_address is not None:
            split_address(bind_address)
        self.node_id = node_id
        self.bind_address = bind_address
        self.tls_files = tls_files
        self.peer_domain = peer_domain
        self.wildcard = wildcard  # a shared *.<peer_domain> certificate speaks for any node
        self.limits = limits or TransportLimits()
        self.insecure = tls_files is None
        self._handlers: dict[str, Handler] = {"peer.ping": self._on_ping}
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        if tls_files is not None:
            self._server_ctx = tls.server_context(tls_files)
            self._client_ctx = tls.client_context(tls_files)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._outboxes: dict[str, _Outbox] = {}
        # Inbound streams (closed on shutdown) with the fingerprint of their certificate.
        self._streams: dict[web.WebSocketResponse, str | None] = {}
        self._revoked: frozenset[str] = frozenset()
        # Fingerprints of the certificates each node id was seen speaking with, and back.
        self._certs_of: dict[str, set[str]] = {}
        self._senders_of: dict[str, set[str]] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self._bound: str | None = None
        self._closing = False
        self.stats: dict[str, int] = {
            "frames_sent": 0,
            "messages_sent": 0,
            "messages_dropped": 0,
            "send_failures": 0,
            "frames_received": 0,
            "messages_received": 0,
            "frames_rejected": 0,
            "revoked_refused": 0,  # requests and streams refused for a revoked certificate
            "calls_sent": 0,
            "calls_failed": 0,
            "streams_lost": 0,  # outbound streams that broke under us (no pong, closed)
            "streams_idle_closed": 0,  # inbound streams closed for silence
            "streams_reset": 0,  # inbound streams whose peer vanished mid-frame
            "peers_lost": 0,  # inbound streams that ended without a goodbye, by sender
        }

    # -- configuration -------------------------------------------------------------------

    def on(self, kind: str, handler: Handler) -> None:
        """Route messages of ``kind`` to ``handler(sender, body)``."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._handlers[kind] = handler

    def on_peer_lost(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(node_id)`` when a peer's stream to us ends without a goodbye."""
        self._lost_callbacks.append(callback)

    def mount(self, app: web.Application) -> None:
        """Serve the peer routes from an existing application (one port for API and peers)."""
        app.router.add_get(STREAM_PATH, self._handle_stream)
        app.on_shutdown.append(self._close_streams)
        app.router.add_post(CALL_PATH, self._handle_call)

    @property
    def server_ssl_context(self) -> ssl.SSLContext | None:
        return self._server_ctx

    @property
    def client_ssl_context(self) -> ssl.SSLContext | None:
        return self._client_ctx

    @property
    def address(self) -> str | None:
        """The address we listen on, with the real port once started."""
        return self._bound or self.bind_address

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the client pool and, given a ``bind_address``, our own server."""
        self._closing = False
        if self._session is None:
            self._session = self.new_session()
        if self.bind_address is not None and self._runner is None:
            app = web.Application(client_max_size=self.limits.max_frame_bytes)
            self.mount(app)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                         keepalive_timeout=self.limits.read_timeout)
            await self._runner.setup()
            host, port = split_address(self.bind_address)
            site = web.TCPSite(self._runner, host, port, ssl_context=self._server_ctx,
                               reuse_address=True)
            await site.start()
            server: Any = site._server
            if server is not None and getattr(server, "sockets", None):
                sock_port = server.sockets[0].getsockname()[1]
                self._bound = f"{host}:{sock_port}"

    def new_session(self) -> aiohttp.ClientSession:
        """A client session over our mutual-TLS context (also used for API calls)."""
        connector = aiohttp.TCPConnector(
            ssl=self._client_ctx if self._client_ctx is not None else False,
            limit=0,
            limit_per_host=self.limits.connections_per_peer,
            # Below the servers' idle limit (read_timeout): we close an idle connection
            # before the server does, never write into one it is closing.
            keepalive_timeout=min(self.limits.keepalive_seconds, self.limits.read_timeout / 2),
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.limits.request_timeout,
                sock_connect=self.limits.connect_timeout,
            ),
        )

    async def stop(self) -> None:
        self._closing = True
        tasks = [o.task for o in self._outboxes.values() if o.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._outboxes.clear()
        await self._close_streams()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reload_tls(self) -> None:
        """Pick up rotated certificate files for new connections."""
        if self.tls_files is not None:
            ctxs = [c for c in (self._server_ctx, self._client_ctx) if c is not None]
            tls.reload_contexts(self.tls_files, ctxs)

    # -- revocation ----------------------------------------------------------------------

    def set_revoked(self, fingerprints: frozenset[str]) -> None:
        """The certificates no peer or client may use any more (hex SHA-256 of the DER).
        New requests are refused; inbound streams already open with one are closed."""
        self._revoked = frozenset(f.lower() for f in fingerprints)
        for ws, fp in list(self._streams.items()):
            if fp is not None and fp in self._revoked and not ws.closed:
                self.stats["revoked_refused"] += 1
                task = asyncio.get_running_loop().create_task(_close_revoked(ws))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)

    def is_revoked(self, identity: tls.Identity) -> bool:
        return identity.fingerprint is not None and identity.fingerprint in self._revoked

    def certificates_of(self, node_id: str) -> frozenset[str]:
        """Fingerprints of the certificates ``node_id`` was seen speaking with."""
        return frozenset(self._certs_of.get(node_id, ()))

    def speakers_of(self, fingerprint: str) -> frozenset[str]:
        """Node ids seen speaking with the certificate ``fingerprint`` (several: shared)."""
        return frozenset(self._senders_of.get(fingerprint, ()))

    def _saw(self, sender: str, identity: tls.Identity) -> None:
        fp = identity.fingerprint
        if len(self._certs_of) >= _MAX_TRACKED and sender not in self._certs_of:
            return  # a wildcard can name endless senders: remember the first ones only
        if fp is not None and fp not in self._certs_of.get(sender, ()):
            self._certs_of.setdefault(sender, set()).add(fp)
            self._senders_of.setdefault(fp, set()).add(sender)

    # -- sending -------------------------------------------------------------------------

    def send(self, address: str, kind: str, body: dict[str, Any], *,
             urgent: bool = False) -> bool:
        """Queue a one-way message; False if the peer's outbox is full (dropped). An
        ``urgent`` one goes ahead of the ordinary messages queued for that peer."""
        if self._closing:
            return False
        box = self._outboxes.get(address)
        if box is None:
            box = self._outboxes[address] = _Outbox()
        if len(box.queue) + len(box.urgent) >= self.limits.outbox_size:
            self.stats["messages_dropped"] += 1
            return False
        (box.urgent if urgent else box.queue).append(wire.Message(kind, body))
        box.idle.clear()
        box.event.set()
        if box.task is None or box.task.done():
            box.task = asyncio.get_running_loop().create_task(self._drain(address, box))
        return True

    async def _drain(self, address: str, box: _Outbox) -> None:
        url = self._url(address, STREAM_PATH)
        ws: aiohttp.ClientWebSocketResponse | None = None
        watcher: asyncio.Task[None] | None = None
        try:
            while not self._closing:
                if not box.queue and not box.urgent:
                    box.idle.set()
                    box.event.clear()
                    await box.event.wait()
                    continue
                if box.urgent:  # ahead of the rest: requeued in front like any overflow
                    box.queue.extendleft(reversed(box.urgent))
                    box.urgent.clear()
                n = min(len(box.queue), self.limits.max_batch)
                batch = tuple(box.queue.popleft() for _ in range(n))
                data = wire.encode(wire.Frame(self.node_id, batch))
                while len(data) > self.limits.max_frame_bytes and n > 1:
                    # Too big for one frame: send the first half now, requeue the rest.
                    n //= 2
                    box.queue.extendleft(reversed(batch[n:]))
                    batch = batch[:n]
                    data = wire.encode(wire.Frame(self.node_id, batch))
                if len(data) > self.limits.max_frame_bytes:
                    self.stats["messages_dropped"] += 1
                    log.warning("dropped a %r message of %d bytes to %s: over the frame limit",
                                batch[0].kind, len(data), address)
                    continue
                try:
                    async with asyncio.timeout(self.limits.send_timeout):
                        if ws is None or ws.closed:
                            await _hang_up(ws, watcher)
                            ws = await self._require_session().ws_connect(
                                url, max_msg_size=self.limits.max_frame_bytes, autoping=True,
                                heartbeat=self.limits.stream_heartbeat,
                                timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
                            watcher = asyncio.get_running_loop().create_task(
                                self._watch_stream(address, ws))
                        await ws.send_bytes(data)
                    self.stats["frames_sent"] += 1
                    self.stats["messages_sent"] += n
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the batch is lost; protocols above retry
                    self.stats["send_failures"] += 1
                    self.stats["messages_dropped"] += n
                    log.debug("send to %s failed: %s", address, exc)
                    # Do not spin against a dead peer: drop what queued meanwhile too.
                    self.stats["messages_dropped"] += len(box.queue) + len(box.urgent)
                    box.queue.clear()
                    box.urgent.clear()
                    await _hang_up(ws, watcher)
                    ws = watcher = None
        finally:
            box.idle.set()
            await _hang_up(ws, watcher)

    async def _watch_stream(self, address: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Read our outbound stream: the server sends only pongs and, at the end, a close.
        Reading answers its pings and takes in its close (or the heartbeat's verdict), so
        the next frame goes to a new connection rather than into a dead one."""
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        if not ws.closed:
            await ws.close()
        if not self._closing:
            self.stats["streams_lost"] += 1
            log.debug("stream to %s ended (code %s): %s", address, ws.close_code,
                      ws.exception())

    async def drain(self, timeout: float) -> bool:
        """Wait until every one-way message queued so far is written (or given up on).

        True once all outboxes are empty; False if ``timeout`` seconds passed first.
        """
        busy = [box.idle for box in self._outboxes.values() if not box.idle.is_set()]
        if not busy:
            return True
        try:
            async with asyncio.timeout(timeout):
                for idle in busy:
                    await idle.wait()
        except TimeoutError:
            return False
        return True

    async def request(
        self,
        address: str,
        kind: str,
        body: dict[str, Any],
        *,
        timeout: float | None = None,
        expect: str | None = None,
    ) -> dict[str, Any]:
        """Call ``kind`` on the peer at ``address`` and return its reply body.

        With ``expect``, the server's certificate must speak for that node id.
        """
        session = self._require_session()
        data = wire.encode(wire.Frame(self.node_id, (wire.Message(kind, body),)))
        self.stats["calls_sent"] += 1
        total = timeout if timeout is not None else self.limits.request_timeout
        try:
            async with session.post(
                self._url(address, CALL_PATH), data=data,
                headers={"Content-Type": FRAME_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=total,
                                              sock_connect=min(total, self.limits.connect_timeout)),
            ) as resp:
                server_id = _peer_identity(resp)
                raw = await _read_at_most(resp, self.limits.max_frame_bytes + 1)
                status = resp.status
        except PeerError:
            self.stats["calls_failed"] += 1
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats["calls_failed"] += 1
            raise PeerError(address, f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            self.stats["calls_failed"] += 1
            raise PeerError(address, f"HTTP {status}: {raw[:300].decode('utf-8', 'replace')}",
                            status=status)
        try:
            frame = wire.decode(raw, self.limits.max_frame_bytes)
        except wire.WireError as exc:
            self.stats["calls_failed"] += 1
            raise PeerError(address, f"bad reply: {exc}") from None
        if not self.insecure:
            if server_id is None:  # fail closed: never trust a reply we cannot attribute
                self.stats["calls_failed"] += 1
                raise PeerError(address, "cannot read the server's certificate")
            if self.is_revoked(server_id):
                self.stats["calls_failed"] += 1
                self.stats["revoked_refused"] += 1
                raise PeerError(address, "the server's certificate is revoked")
            if not tls.is_node(server_id) or not self._speaks_for(server_id, frame.sender):
                self.stats["calls_failed"] += 1
                raise PeerError(address, f"reply claims to be {frame.sender!r} but its "
                                         f"certificate does not say so: {tls.NODE_CERT_NEEDS}")
            self._saw(frame.sender, server_id)
            if expect is not None and frame.sender != expect:
                self.stats["calls_failed"] += 1
                raise PeerError(address, f"expected node {expect!r}, reached {frame.sender!r}")
        return frame.messages[0].body

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("transport not started")
        return self._session

    def _url(self, address: str, path: str) -> str:
        host, port = split_address(address)
        if ":" in host:
            host = f"[{host}]"
        scheme = "http" if self.insecure else "https"
        return f"{scheme}://{host}:{port}{path}"

    def _on_ping(self, sender: str, body: dict[str, Any]) -> Reply:
        return {"node_id": self.node_id, "echo": body.get("echo")}

    def _speaks_for(self, identity: tls.Identity, sender: str) -> bool:
        return tls.authorizes(identity, sender, self.peer_domain, wildcard=self.wildcard)

    def _check_node(self, identity: tls.Identity | None) -> web.Response | None:
        """The refusal for a certificate that may not speak the peer protocol, if it may not."""
        if identity is None:
            return self._reject(403, "no_certificate", "a client certificate is required")
        if self.is_revoked(identity):
            self.stats["revoked_refused"] += 1
            return self._reject(403, "revoked", "this certificate is revoked")
        if not tls.is_node(identity):
            return self._reject(403, "not_a_node", "client certificate lacks the node role: "
                                + tls.NODE_CERT_NEEDS)
        return None

    # -- receiving -----------------------------------------------------------------------

    async def _read_frame(self, request: web.Request) -> wire.Frame | web.Response:
        length = request.content_length
        if length is not None and length > self.limits.max_frame_bytes:
            return self._reject(413, "too_large", "frame exceeds the size limit")
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, "too_large", "frame exceeds the size limit")
        except TimeoutError:
            return self._reject(408, "timeout", "the frame did not arrive in time")
        try:
            frame = wire.decode(data, self.limits.max_frame_bytes)
        except wire.WireError as exc:
            status = 413 if exc.code == "too_large" else 400
            return self._reject(status, exc.code, exc.message)
        if not self.insecure:
            identity = request_identity(request)
            refusal = self._check_node(identity)
            if refusal is not None:
                return refusal
            assert identity is not None
            if not self._speaks_for(identity, frame.sender):
                return self._reject(
                    403, "forged_sender",
                    f"sender {frame.sender!r} is not an identity of the client certificate: "
                    + tls.NODE_CERT_NEEDS,
                )
            self._saw(frame.sender, identity)
        self.stats["frames_received"] += 1
        self.stats["messages_received"] += len(frame.messages)
        return frame

    def _reject(self, status: int, code: str, message: str) -> web.Response:
        self.stats["frames_rejected"] += 1
        return web.json_response({"error": code, "message": message}, status=status)

    async def _dispatch(self, sender: str, msg: wire.Message) -> Reply:
        handler = self._handlers.get(msg.kind)
        if handler is None:
            raise LookupError(msg.kind)
        result = handler(sender, msg.body)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        """One-way frames from one peer over a WebSocket, handled in arrival order.

        A frame that fails any check closes the stream (the peer reconnects and the
        protocols above retry); nothing of that frame reaches a handler.
        """
        identity = tls.Identity()
        if not self.insecure:
            found = request_identity(request)
            refusal = self._check_node(found)
            if refusal is not None:
                return refusal
            assert found is not None
            identity = found
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_frame_bytes, autoping=True)
        await ws.prepare(request)
        self._streams[ws] = identity.fingerprint
        senders: set[str] = set()
        goodbye = False
        try:
            goodbye = await self._read_stream(ws, identity, senders)
        except ConnectionResetError:
            # The peer vanished mid-frame (killed, or its connection dropped while we
            # answered a ping): the stream is over, which is not a server error.
            self.stats["streams_reset"] += 1
        finally:
            self._streams.pop(ws, None)
        if not goodbye and not self._closing:
            for sender in senders:
                self._peer_lost(sender)
        return ws

    def _peer_lost(self, node_id: str) -> None:
        self.stats["peers_lost"] += 1
        for callback in self._lost_callbacks:
            try:
                callback(node_id)
            except Exception:
                log.exception("peer-lost callback failed")

    async def _close_streams(self, app: web.Application | None = None) -> None:
        """Close inbound streams so shutdown does not wait for peers to hang up."""
        for ws in list(self._streams):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutting down")

    async def _read_stream(self, ws: web.WebSocketResponse, identity: tls.Identity,
                           senders: set[str]) -> bool:
        """Handle the stream's frames until it ends; True if it ended in good order (the
        peer's close frame, ours, or a refusal), False if the peer vanished. ``senders``
        collects who spoke on it."""
        while True:
            try:
                # Pings reset this: only a client that went silent (dead, or not ours) hits it.
                item = await ws.receive(timeout=self.limits.stream_idle_timeout)
            except TimeoutError:
                self.stats["streams_idle_closed"] += 1
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"idle")
                return False
            if item.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                return True
            if item.type is aiohttp.WSMsgType.CLOSED:  # no close frame: the peer vanished
                return False
            if item.type is aiohttp.WSMsgType.ERROR:  # closed already, with the reason
                if isinstance(item.data, aiohttp.WebSocketError):  # e.g. over max_msg_size
                    self.stats["frames_rejected"] += 1
                    return True  # we closed it
                return False
            if item.type is not aiohttp.WSMsgType.BINARY:
                self.stats["frames_rejected"] += 1
                await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA,
                               message=b"malformed: binary frames only")
                return True
            try:
                frame = wire.decode(item.data, self.limits.max_frame_bytes)
            except wire.WireError as exc:
                self.stats["frames_rejected"] += 1
                await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION,
                               message=exc.code.encode())
                return True
            if not self.insecure:
                if not self._speaks_for(identity, frame.sender):
                    self.stats["frames_rejected"] += 1
                    await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION,
                                   message=b"forged_sender")
                    return True
                if self.is_revoked(identity):  # revoked while this frame was on its way
                    self.stats["revoked_refused"] += 1
                    await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"revoked")
                    return True
                self._saw(frame.sender, identity)
            senders.add(frame.sender)
            self.stats["frames_received"] += 1
            self.stats["messages_received"] += len(frame.messages)
            for msg in frame.messages:
                try:
                    await self._dispatch(frame.sender, msg)
                except LookupError:
                    log.debug("no handler for %r from %s", msg.kind, frame.sender)
                except PermissionError as exc:  # refused (and counted) by the protocol
                    log.debug("%s from %s refused: %s", msg.kind, frame.sender, exc)
                except Exception:
                    log.exception("handler for %r failed", msg.kind)

    async def _handle_call(self, request: web.Request) -> web.StreamResponse:
        frame = await self._read_frame(request)
        if isinstance(frame, web.Response):
            return frame
        if len(frame.messages) != 1:
            return self._reject(400, "malformed", "a call carries exactly one message")
        msg = frame.messages[0]
        try:
            reply = await self._dispatch(frame.sender, msg)
        except LookupError:
            return self._reject(404, "unknown_kind", f"no handler for {msg.kind!r}")
        except PermissionError as exc:  # a handler's protocol does not admit this sender
            return self._reject(403, "not_admitted", str(exc))
        except ValueError as exc:
            return self._reject(400, "invalid", str(exc))
        out = wire.encode(wire.Frame(self.node_id, (wire.Message(msg.kind, reply or {}),)))
        return web.Response(body=out, content_type=FRAME_CONTENT_TYPE)


async def _close_revoked(ws: web.WebSocketResponse) -> None:
    await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"revoked")


async def _hang_up(ws: aiohttp.ClientWebSocketResponse | None,
                   watcher: asyncio.Task[None] | None) -> None:
    if watcher is not None:
        watcher.cancel()  # we close it: not a lost stream
        await asyncio.wait([watcher])  # (unlike awaiting it, keeps a cancel of ours)
    if ws is not None and not ws.closed:
        await ws.close()


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes; ``content.read(n)`` alone may stop at a chunk boundary."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def request_identity(request: web.BaseRequest) -> tls.Identity | None:
    """The verified client certificate's identity (None without one, or without TLS)."""
    transport = request.transport
    if transport is None:
        return None
    return tls.identity_of(transport.get_extra_info("ssl_object"))


def _peer_identity(resp: aiohttp.ClientResponse) -> tls.Identity | None:
    """The server certificate's identities. aiohttp releases the connection as soon as a
    small body is read, so fall back to the response's protocol, which still holds the
    TLS transport (a test pins this against aiohttp upgrades)."""
    connection = resp.connection
    transport = connection.transport if connection is not None else None
    if transport is None:
        transport = getattr(getattr(resp, "_protocol", None), "transport", None)
    if transport is None:
        return None
    return tls.identity_of(transport.get_extra_info("ssl_object"))



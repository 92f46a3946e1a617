"""The API port's connections: the concept routes' plain requests served here, every
other request handed to aiohttp.

aiohttp spends 50-60 µs of CPU on a request beyond what the request itself needs (its
request, stream and response objects; docs/performance.md), and on a node under load
nearly every request is a concept read or write. So a connection on the API port starts
with this protocol. It cuts each request's head from what has arrived, parses it with
httptools (llhttp, the parser of Node.js), and serves a request here when it is in the
plain form: HTTP/1.1, ``PUT``, ``GET`` or ``DELETE`` of ``/v1/concepts/{id}`` with an id
that needs no decoding, no query or ``consistency=strong|eventual``, a body framed by
Content-Length and within the limit, no Upgrade or Expect, CRLF line ends. Such a request
runs the aiohttp route's own code (``api.ConceptCalls``, ``api.authorize``): the same
answer, the same metrics. The first request in any other form (and everything after it
on that connection: the peer streams' websocket upgrade, admin calls, a chunked body, a
malformed head) goes to aiohttp's protocol, replayed from that request's first byte, once
every earlier answer has been written. So each request gets the answer aiohttp's route
would give, or aiohttp gives it.

Requests on one connection are served one at a time, in order (pipelined ones wait in the
buffer, and reading pauses while it is full). A connection that sends no complete head
for ``read_timeout`` seconds is closed, as aiohttp's keep-alive timeout closes one; a body
that does not arrive in time gets 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import ssl
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, cast

import httptools
import orjson
from aiohttp import web

from . import api, errors, http_util
from .transport import tls

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8190  # aiohttp's own limit of a request line (it answers longer ones)
_PREFIX = b"/v1/concepts/"
_QUERIES = {b"": False, b"consistency=strong": True, b"consistency=eventual": False}
_ROUTES = {b"PUT": ("put", api.WRITE), b"GET": ("get", api.READ),
           b"DELETE": ("delete", api.WRITE)}
# Headers that take a request out of the plain form (aiohttp's protocol serves it).
_NOT_PLAIN = frozenset({b"transfer-encoding", b"upgrade", b"expect", b"sec-websocket-key1"})
# Headers aiohttp refuses to see twice (RFC 9110's singletons): a request repeating one is
# aiohttp's to refuse.
_SINGLETONS = frozenset({b"content-length", b"content-location", b"content-range",
                         b"content-type", b"etag", b"host", b"max-forwards", b"server",
                         b"user-agent"})
_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


class Plain:
    """One request's head, as llhttp parsed it; ``plain`` when it is in the plain form
    as far as its headers go."""

    __slots__ = ("_parser", "_seen", "content_length", "idempotency_key", "keep_alive",
                 "plain", "target")

    def __init__(self, head: bytes) -> None:
        self.target = b""
        self.content_length = 0
        self.idempotency_key = ""
        self.keep_alive = True
        self.plain = True
        self._seen: set[bytes] = set()
        self._parser = httptools.HttpRequestParser(self)
        # Raises HttpParserError for a malformed head, HttpParserUpgrade for an upgrade.
        self._parser.feed_data(head)

    @property
    def method(self) -> bytes:
        return self._parser.get_method()

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in _SINGLETONS:
            if lower in self._seen:
                self.plain = False
            self._seen.add(lower)
            if lower == b"content-length":
                self.content_length = int(value)  # llhttp checked it is digits
        elif lower == b"idempotency-key":
            if lower not in self._seen:  # the first, as aiohttp's headers.get
                self._seen.add(lower)
                if value.isascii():  # llhttp keeps trailing whitespace; aiohttp drops it
                    self.idempotency_key = value.decode("ascii").rstrip(" \t")
                else:
                    self.plain = False
        elif lower in _NOT_PLAIN:
            self.plain = False

    def on_headers_complete(self) -> None:
        # llhttp's own reading of Connection (and the version), as aiohttp's; asked here,
        # since once the message is complete llhttp has moved on to the next one.
        self.keep_alive = self._parser.should_keep_alive()
        if b"host" not in self._seen or self._parser.get_http_version() != "1.1":
            self.plain = False


def parse_head(head: bytes) -> Plain | None:
    """The request whose head is ``head`` (up to and with its blank line), or None when
    it is not in the plain form (as far as its head goes)."""
    if len(head) > MAX_HEAD_BYTES or head.count(b"\n") != head.count(b"\r\n"):
        return None  # aiohttp judges long lines; a bare LF: llhttp and aiohttp may differ
    try:
        plain = Plain(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError):
        return None  # aiohttp answers it (400), or upgrades the connection
    return plain if plain.plain else None


class ConceptServer:
    """What the plain requests need from the node, and the connections open on the port."""

    def __init__(self, services: api.Services,
                 aiohttp_server: Callable[[], asyncio.Protocol]) -> None:
        self.services = services
        self.calls = api.ConceptCalls(services.concepts)
        self.aiohttp_server = aiohttp_server
        # For a head, as aiohttp's keep-alive timeout (the node sets both from one
        # setting), and for a body, as the aiohttp routes' deadline.
        self.read_timeout = services.read_timeout
        self.connections: set[ApiConnection] = set()
        self.closing = False
        self.served = 0  # requests answered here rather than by aiohttp
        self._date = (0, "")

    def __call__(self) -> ApiConnection:
        return ApiConnection(self)

    def date(self) -> str:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    async def shutdown(self, grace: float) -> None:
        """Close idle connections now and busy ones after their answer (a request pipelined
        behind it is not started); after ``grace`` seconds cancel what is still running."""
        self.closing = True
        busy = []
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
            else:
                busy.append(conn.task)
        if busy:
            _, pending = await asyncio.wait(busy, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for conn in list(self.connections):
            conn.close()


class ApiConnection(asyncio.Protocol):
    def __init__(self, server: ConceptServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._identity: tls.Identity | None = None
        self._buffer = bytearray()
        self._reading_paused = False
        self._writing_paused = False
        self._close_after = False
        # Since when this connection has owed us a head (idle since its last answer), or
        # since its head came in, the body it owes; measured from there, not from the last
        # bytes seen, so a head or body sent a byte at a time still runs out of time.
        self._waiting_since = 0.0
        self._head_seen = False
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # the request being served

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TLS transport is not an asyncio.Transport subclass, but is one)
        self._transport = transport = cast(asyncio.Transport, transport)
        self._identity = tls.identity_of(transport.get_extra_info("ssl_object"))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._server.connections.add(self)
        self._waiting_since = self._loop.time()
        self._timer = self._loop.call_at(self._waiting_since + self._server.read_timeout,
                                         self._check_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        # A request under way goes on (aiohttp does not cancel handlers either): a write
        # already proposed takes effect whether or not its client still listens.
        self._server.connections.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.task is None:
            self._next()
        elif len(self._buffer) > http_util.MAX_JSON_BYTES + MAX_HEAD_BYTES:
            self._pause_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.task is None:
            self._next()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- requests ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the next request in the buffer if it is whole, or hand the connection over."""
        transport = self._transport
        if transport is None or self._writing_paused or self._close_after:
            return
        if self._server.closing:  # shutting down: no new request, here or in aiohttp
            transport.close()
            return
        buf = self._buffer
        if not buf:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES or b"\n\n" in buf:
                self._hand_over()
            else:
                self._resume_reading()
            return
        head = bytes(buf[:end + 4])
        plain = parse_head(head)
        if plain is None:
            self._hand_over()
            return
        route = _ROUTES.get(plain.method)
        query = _strong_query(plain.target)
        concept_id = plain.target[len(_PREFIX):].partition(b"?")[0]
        if route is None or query is None or not plain.target.startswith(_PREFIX) \
                or not api.CONCEPT_ID.match(concept_id.decode("ascii", "replace")) \
                or plain.content_length > http_util.MAX_JSON_BYTES:
            self._hand_over()
            return
        total = end + 4 + plain.content_length
        if len(buf) < total:
            if not self._head_seen:
                self._head_seen = True
                self._waiting_since = self._loop.time()
            self._resume_reading()
            return  # the body is on its way (the timer watches it)
        body = bytes(buf[end + 4:total])
        del buf[:total]
        self._close_after = not plain.keep_alive
        self._head_seen = False
        name, role = route
        self._server.served += 1
        self.task = self._loop.create_task(self._serve(
            name, role, concept_id.decode("ascii"), query, plain.idempotency_key, body))

    def _hand_over(self) -> None:
        """From here on aiohttp's protocol serves this connection, starting with what is
        in the buffer (the first byte of a request)."""
        transport = self._transport
        assert transport is not None and self.task is None
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        handler = self._server.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)

    async def _serve(self, name: str, role: str, concept_id: str, strong: bool, key: str,
                     body: bytes) -> None:
        start = time.perf_counter()
        status = 500
        headers: dict[str, str] = {}
        try:
            api.authorize(self._server.services, self._identity, role)
            calls = self._server.calls
            if name == "put":
                if not body:
                    raise errors.InvalidInput("a JSON body is required", code="empty_body")
                out: Any = await calls.put(concept_id, http_util.parse_json(body), strong, key)
            elif name == "get":
                out = await calls.get(concept_id, strong)
            else:
                out = await calls.delete(concept_id, strong, key)
            status = 200
        except errors.FederationError as exc:
            status, out, headers = api.error_parts(exc)
        except Exception:  # a bug: the traceback goes to the log, the client gets JSON
            log.exception("%s /v1/concepts/%s failed", name, concept_id)
            out = {"error": "internal", "message": "internal error (see the node's log)"}
        finally:
            self._server.services.metrics.observe_request(name, status,
                                                          time.perf_counter() - start)
        self._answer(status, orjson.dumps(out, option=orjson.OPT_NON_STR_KEYS), headers)
        self.task = None
        self._waiting_since = self._loop.time()
        if self._transport is not None:
            self._next()

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = [f"HTTP/1.1 {status} {_PHRASES[status]}",
                 f"Content-Type: {http_util.JSON_TYPE}",
                 f"Content-Length: {len(body)}",
                 f"Date: {self._server.date()}"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if self._close_after:
            lines.append("Connection: close")
        transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        if self._close_after:
            transport.close()

    # -- flow and time ----------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _check_timeout(self) -> None:
        """Close a connection that has been waiting for a request (or its body) too long:
        one timer per connection, moved on rather than re-armed for every request."""
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        deadline = self._waiting_since + self._server.read_timeout
        if self.task is None and self._loop.time() >= deadline:
            if self._head_seen:  # a head whose body did not come
                self._close_after = True
                status, out, headers = api.error_parts(errors.RequestTimeout(
                    f"the body did not arrive within {self._server.read_timeout:g} s"))
                self._answer(status, orjson.dumps(out), headers)
            transport.close()
            return
        if self.task is not None:
            deadline = self._loop.time() + self._server.read_timeout
        self._timer = self._loop.call_at(deadline, self._check_timeout)


def _strong_query(target: bytes) -> bool | None:
    """Whether the target asks for strong consistency; None for any other query."""
    _, sep, query = target.partition(b"?")
    return _QUERIES.get(query) if sep else False


async def listen(services: api.Services, runner: web.AppRunner, host: str, port: int,
                 ssl_context: ssl.SSLContext | None) -> tuple[asyncio.Server, ConceptServer]:
    """The API port: ``runner`` (set up) serves whatever is not a plain concept request."""
    if runner.server is None:
        raise RuntimeError("the runner is not set up")
    concepts = ConceptServer(services, runner.server)
    listener = await asyncio.get_running_loop().create_server(
        concepts, host, port, ssl=ssl_context, reuse_address=True)
    return listener, concepts

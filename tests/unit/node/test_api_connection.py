"""The API port's own serving of plain concept requests (``api_connection``): the same
answers as the aiohttp routes, everything else handed to aiohttp on the same connection,
requests answered in order, no connection held open past its deadline.

Real TLS on loopback with certificates of each role; the services are stand-ins
(``test_api_errors``). A request is sent in its plain form, which the port serves itself,
and with a chunked body, which only aiohttp serves: the two answers must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp import web

from conftest import TestPKI
from continuum.federation.distributed import api, api_connection, errors, http_util
from continuum.federation.distributed.transport import tls
from unit.node.test_api_errors import _Metrics, _Services

# Every test here runs on the standard loop and on uvloop, whose TLS transport the node
# runs (tests/conftest.py's pytest_asyncio_loop_factories).
pytestmark = pytest.mark.uvloop_too


class _Echo(_Services):
    """Stand-ins that answer with what they were asked (or raise ``error``)."""

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        await super()._fail(*args, **kwargs)
        return {"asked": [*args, *kwargs.values()]}

    put_strong = put_eventual = get = delete_strong = delete_eventual = _fail


@dataclass
class Port:
    port: int
    concepts: api_connection.ConceptServer
    fake: _Echo
    metrics: _Metrics
    pki: TestPKI
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def context(self, role: str) -> ssl.SSLContext:
        if role not in self.contexts:
            files = self.pki.node("node-9") if role == "node" else self.pki.client("t", role)
            self.contexts[role] = tls.client_context(files)
        return self.contexts[role]

    async def connect(self, role: str = "admin") -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                      ssl=self.context(role))
        return Connection(reader, writer)

    async def ask(self, raw: bytes, role: str = "admin") -> Answer:
        conn = await self.connect(role)
        try:
            conn.send(raw)
            return (await conn.answers(1))[0]
        finally:
            conn.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """A raw HTTP/1.1 client over TLS: bytes out as given, answers parsed by llhttp."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._done: list[Answer] = []
        self._headers: dict[str, str] = {}
        self._body = b""
        self._parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._done.append(Answer(self._parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def answers(self, n: int) -> list[Answer]:
        while len(self._done) < n:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise AssertionError(f"closed after {len(self._done)} of {n} answers")
            self._parser.feed_data(data)
        out, self._done = self._done[:n], self._done[n:]
        return out

    async def closed(self) -> bool:
        """True once the server closes the connection (having sent nothing more)."""
        return await asyncio.wait_for(self.reader.read(65536), 10) == b""

    def close(self) -> None:
        self.writer.close()


def request(method: str, target: str, body: bytes | None = None, *, chunked: bool = False,
            headers: tuple[str, ...] = (), version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: 127.0.0.1", *headers]
    payload = b""
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        data = body or b""
        payload = (f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b"") + b"0\r\n\r\n"
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + payload


async def _echo_stream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_bytes(message.data)
    return ws


@contextlib.asynccontextmanager
async def api_port(pki: TestPKI, error: BaseException | None = None, read_timeout: float = 10.0,
                   revoked: str = "") -> AsyncIterator[Port]:
    fake, metrics = _Echo(error), _Metrics()
    services = api.Services("node-1", fake, fake, None, fake, dict,  # type: ignore[arg-type]
                            metrics, is_revoked=lambda i: i.fingerprint == revoked,
                            read_timeout=read_timeout)
    app = web.Application()
    api.mount(app, services)
    app.router.add_get("/test/echo", _echo_stream)  # as the peer streams are upgraded
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=read_timeout)
    await runner.setup()
    listener, concepts = await api_connection.listen(
        services, runner, "127.0.0.1", 0, tls.server_context(pki.node("node-1")))
    try:
        yield Port(listener.sockets[0].getsockname()[1], concepts, fake, metrics, pki)
    finally:
        listener.close()
        await asyncio.gather(concepts.shutdown(1.0), runner.cleanup())


CASES: list[tuple[str, str, bytes | None, tuple[str, ...]]] = [
    ("PUT", "/v1/concepts/c1", b'{"a": 1}', ()),
    ("PUT", "/v1/concepts/c1?consistency=strong", b'{"a": [1, 2.5, "x"]}',
     ("Idempotency-Key: k-17",)),
    ("PUT", "/v1/concepts/c1?consistency=eventual", b'"text"', ()),
    ("PUT", "/v1/concepts/c1?consistency=strong", b"{}",
     ("Idempotency-Key:  k-2 \t", "Idempotency-Key: second", "X-Other: 1")),
    ("PUT", "/v1/concepts/a.b:c_d-9", b"{}", ()),
    ("PUT", "/v1/concepts/c1", b"null", ()),
    ("PUT", "/v1/concepts/c1", b"", ()),
    ("PUT", "/v1/concepts/c1", b"{not json", ()),
    ("PUT", "/v1/concepts/c1", b"[" * 70 + b"]" * 70, ()),
    ("PUT", "/v1/concepts/c1", b'{"n": 1e400}', ()),
    ("PUT", "/v1/concepts/c1", b'{"n": 123456789012345678901234}', ()),
    ("GET", "/v1/concepts/c1", None, ()),
    ("GET", "/v1/concepts/c1?consistency=strong", None, ()),
    ("DELETE", "/v1/concepts/c1", None, ()),
    ("DELETE", "/v1/concepts/c1?consistency=strong", None, ("Idempotency-Key: d-1",)),
]
ERRORS: list[BaseException | None] = [
    None, errors.InvalidInput("bad"), errors.NotFound("no c1"),
    errors.WrongConsistency("c1", "strong"), errors.NotLeader("node-2", "127.0.0.12:7000"),
    errors.Overloaded("raft inbox full"), errors.OutcomeUnknown(), RuntimeError("secret detail"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
async def test_a_plain_request_gets_the_answer_the_route_gives(cluster_pki: TestPKI,
                                                               error: BaseException | None,
                                                               ) -> None:
    async with api_port(cluster_pki, error) as port:
        for method, target, body, headers in CASES:
            seen = port.concepts.served
            plain = await port.ask(request(method, target, body, headers=headers))
            assert port.concepts.served == seen + 1, (method, target)
            plain_calls, plain_metrics = list(port.fake.calls), list(port.metrics.requests)
            port.fake.calls.clear()
            port.metrics.requests.clear()
            routed = await port.ask(request(method, target, body, headers=headers,
                                            chunked=True))
            assert port.concepts.served == seen + 1  # aiohttp's
            case = (method, target, body)
            assert plain.status == routed.status, case
            assert plain.json() == routed.json(), case
            assert plain.headers.get("retry-after") == routed.headers.get("retry-after"), case
            assert plain.headers["content-type"] == http_util.JSON_TYPE
            assert "date" in plain.headers
            assert plain_calls == port.fake.calls, case  # same arguments, same key
            assert plain_metrics == port.metrics.requests, case
            assert b"secret detail" not in plain.body
            port.fake.calls.clear()
            port.metrics.requests.clear()


@pytest.mark.parametrize("role", ["read", "write", "admin", "node", "revoked"])
async def test_the_plain_path_checks_the_certificates_role(cluster_pki: TestPKI,
                                                           role: str) -> None:
    revoked = cluster_pki.client("revoked", "admin")  # an admin's, on the denylist
    fingerprint = tls.identity_of_file(revoked.cert).fingerprint
    assert fingerprint
    async with api_port(cluster_pki, revoked=fingerprint) as port:
        port.contexts["revoked"] = tls.client_context(revoked)
        for method, needed in (("GET", "read"), ("PUT", "write"), ("DELETE", "write")):
            body = b"{}" if method == "PUT" else None
            answer = await port.ask(request(method, "/v1/concepts/c1", body), role=role)
            allowed = role in tls.API_ROLES and \
                tls.API_ROLES.index(role) >= tls.API_ROLES.index(needed)
            if allowed:
                assert answer.status == 200, (role, method)
            else:
                assert answer.status == 403, (role, method)
                assert answer.json()["role_needed"] == needed
        assert port.concepts.served == 3
        if role in ("node", "revoked"):
            assert port.fake.calls == []


async def test_pipelined_requests_are_answered_in_order_across_the_hand_over(
        cluster_pki: TestPKI) -> None:
    """Plain requests, then one for aiohttp, then more, all in one write: every answer in
    order; from the first request aiohttp serves, it serves the rest of the connection."""
    async with api_port(cluster_pki) as port:
        conn = await port.connect()
        conn.send(b"".join([request("PUT", f"/v1/concepts/k{i}", b'{"i": %d}' % i)
                            for i in range(3)]
                           + [request("GET", "/v1/revocations"),
                              request("GET", "/v1/concepts/k3"),
                              request("PUT", "/v1/concepts/k4", b"{}")]))
        answers = await conn.answers(6)
        conn.close()
    assert [a.status for a in answers] == [200] * 6
    assert [a.json()["asked"][0] for a in answers[:3]] == ["k0", "k1", "k2"]
    assert answers[3].json() == {"revoked": {}}
    assert [a.json()["asked"][0] for a in answers[4:]] == ["k3", "k4"]
    assert port.concepts.served == 3


async def test_a_websocket_upgrade_is_aiohttps(cluster_pki: TestPKI) -> None:
    async with api_port(cluster_pki) as port, aiohttp.ClientSession() as session, \
            session.ws_connect(f"https://127.0.0.1:{port.port}/test/echo",
                               ssl=port.context("admin")) as ws:
        await ws.send_bytes(b"frame")
        assert await ws.receive_bytes(timeout=10) == b"frame"
        assert port.concepts.served == 0


async def test_a_connection_aiohttp_began_stays_with_aiohttp(cluster_pki: TestPKI) -> None:
    async with api_port(cluster_pki) as port:
        conn = await port.connect()
        conn.send(request("GET", "/v1/revocations"))
        await conn.answers(1)
        conn.send(request("PUT", "/v1/concepts/c1", b"{}"))
        (answer,) = await conn.answers(1)
        conn.close()
    assert answer.status == 200 and answer.json()["asked"][0] == "c1"
    assert port.concepts.served == 0


@pytest.mark.parametrize(("raw", "status"), [
    (request("PUT", "/v1/concepts/nl%0A", b"{}"), 400),  # an id that needs decoding
    (request("PUT", "/v1/concepts/sp%20ace", b"{}"), 400),
    (request("PUT", "/v1/concepts/-lead", b"{}"), 400),
    (request("PUT", "/v1/concepts/c1?consistency=bogus", b"{}"), 400),
    (request("PUT", "/v1/concepts/c1?other=1", b"{}"), 200),
    (request("PUT", "/v1/concepts/c1", b"{}", version="1.0"), 200),
    (request("GET", "/v1/concepts/c1/more"), 404),
    (request("POST", "/v1/concepts/c1", b"{}"), 405),
    (request("PUT", "/v1/concepts/c1", b"{}", headers=("Expect: 100-continue",)), 100),
    (b"PUT /v1/concepts/c1 HTTP/1.1\nHost: h\nContent-Length: 2\n\n{}", 400),  # bare LFs
    (b"PUT /v1/concepts/c1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
     b"Content-Length: 2\r\n\r\n{}", 400),
    (request("PUT", "/v1/concepts/c1", b"{}", headers=("Host: again",)), 400),
    (b"PUT /v1/concepts/c1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400),  # no Host
    (b"PUT /v1/concepts/c1 HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n"
     b"Content-Length: 2\r\n\r\n{}", 400),
    (request("PUT", "/v1/concepts/c1", b"{}", headers=("X-Long: " + "a" * 9000,)), 400),
    (b"PUT /v1/concepts/c1 HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
     % (http_util.MAX_JSON_BYTES + 1), 413),
])
async def test_requests_in_any_other_form_are_aiohttps(cluster_pki: TestPKI, raw: bytes,
                                                       status: int) -> None:
    async with api_port(cluster_pki) as port:
        answer = await port.ask(raw)
        assert answer.status == status
        assert port.concepts.served == 0


async def test_a_head_that_does_not_come_in_time_closes_the_connection(
        cluster_pki: TestPKI) -> None:
    """Measured from when the connection began to owe a head, not from its last byte: a
    head sent a byte at a time runs out of time all the same."""
    async with api_port(cluster_pki, read_timeout=0.5) as port:
        conn = await port.connect()
        start = time.monotonic()
        drip = b"PUT /v1/concepts/c1 HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 200
        for byte in drip:  # 4 s of it, a byte every 20 ms
            conn.send(bytes([byte]))
            await asyncio.sleep(0.02)
            if conn.reader.at_eof():
                break
        assert await conn.closed()
        assert 0.5 <= time.monotonic() - start < 3.0  # while the drip went on
        assert port.fake.calls == []


async def test_a_body_that_does_not_come_in_time_is_408_and_nothing_is_done(
        cluster_pki: TestPKI) -> None:
    async with api_port(cluster_pki, read_timeout=0.5) as port:
        conn = await port.connect()
        conn.send(b"PUT /v1/concepts/c1 HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n{\"a\"")
        (answer,) = await conn.answers(1)
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert answer.json()["error"] == errors.RequestTimeout.code
        assert await conn.closed()
        assert port.fake.calls == []


async def test_an_idle_connection_is_kept_until_the_read_timeout(cluster_pki: TestPKI) -> None:
    async with api_port(cluster_pki, read_timeout=0.5) as port:
        conn = await port.connect()
        conn.send(request("GET", "/v1/concepts/c1"))
        await conn.answers(1)
        start = time.monotonic()
        assert await conn.closed()
        assert time.monotonic() - start >= 0.45


async def test_connection_close_is_honoured(cluster_pki: TestPKI) -> None:
    async with api_port(cluster_pki) as port:
        conn = await port.connect()
        conn.send(request("GET", "/v1/concepts/c1", headers=("Connection: close",))
                  + request("GET", "/v1/concepts/c2"))
        (answer,) = await conn.answers(1)
        assert answer.headers["connection"] == "close"
        assert await conn.closed()
        assert port.fake.calls == [("c1", False)]  # the request after it is not served


async def test_shutdown_lets_a_request_under_way_answer_and_closes_idle_connections(
        cluster_pki: TestPKI) -> None:
    release, started = asyncio.Event(), asyncio.Event()
    async with api_port(cluster_pki) as port:
        async def slow(*args: Any) -> dict[str, Any]:
            started.set()
            await release.wait()
            return {"done": True}
        port.fake.put_strong = slow  # type: ignore[method-assign]
        busy, idle = await port.connect(), await port.connect()
        busy.send(request("PUT", "/v1/concepts/c1?consistency=strong", b"{}")
                  + request("GET", "/v1/revocations"))  # pipelined: not started
        await started.wait()
        stopping = asyncio.create_task(port.concepts.shutdown(5.0))
        assert await idle.closed()
        release.set()
        (answer,) = await busy.answers(1)
        assert answer.json() == {"done": True}
        await stopping
        assert await busy.closed()
        assert port.fake.calls == []  # nothing else reached a service (slow is not _fail)
        assert port.concepts.served == 1


async def test_shutdown_cancels_what_outlives_its_grace(cluster_pki: TestPKI) -> None:
    cancelled, started = asyncio.Event(), asyncio.Event()
    async with api_port(cluster_pki) as port:
        async def stuck(*args: Any) -> dict[str, Any]:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()
            return {}
        port.fake.put_strong = stuck  # type: ignore[method-assign]
        conn = await port.connect()
        conn.send(request("PUT", "/v1/concepts/c1?consistency=strong", b"{}"))
        await started.wait()
        await port.concepts.shutdown(0.2)
        assert cancelled.is_set()
        assert await conn.closed()

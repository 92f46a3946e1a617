"""How the HTTP API reports a node's refusals: the status, the error code and what is safe."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from continuum.federation.distributed import api, consensus


class _Metrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    def observe_request(self, name: str, status: int, seconds: float) -> None:
        self.requests.append((name, status))


class _Node:
    """Only what the concept routes call; each write raises what the test gives it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.metrics = _Metrics()
        self.added: tuple[Any, ...] = ()

    async def put_strong(self, concept_id: str, value: Any, key: str) -> dict[str, Any]:
        raise self.error

    async def put_eventual(self, concept_id: str, value: Any) -> dict[str, Any]:
        raise self.error

    def require_leader(self) -> None:
        pass

    async def transfer_leadership(self, target: str | None) -> str:
        raise self.error

    async def add_member(self, node_id: str, address: str, timeout: float) -> None:
        self.added = (node_id, address, timeout)
        raise self.error


@contextlib.asynccontextmanager
async def _serving(node: _Node) -> AsyncIterator[TestClient[Any, Any]]:
    """The API routes over ``node``, and a client for them."""
    app = web.Application()
    api.mount(app, node)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def _put(error: BaseException, query: str, value: Any
               ) -> tuple[web.Response, dict[str, Any], _Node]:
    node = _Node(error)
    async with _serving(node) as client:
        resp = await client.put(f"/v1/concepts/c1{query}",
                                data="null" if value is None else json.dumps(value),
                                headers={"Content-Type": "application/json"})
        return resp, await resp.json(), node  # type: ignore[return-value]


async def test_an_overloaded_node_answers_503_with_retry_after() -> None:
    resp, body, node = await _put(consensus.OverloadedError("raft inbox full"),
                                  "?consistency=strong", {"a": 1})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert body["error"] == "overloaded" and "inbox full" in body["message"]
    assert node.metrics.requests == [("put", 503)]


async def test_a_timed_out_strong_write_is_503_and_says_the_outcome_is_unknown() -> None:
    resp, body, _ = await _put(TimeoutError(), "?consistency=strong", {"a": 1})
    assert resp.status == 503
    assert body["error"] == "timeout" and "Idempotency-Key" in body["message"]


async def test_an_unexpected_error_is_a_json_500_without_its_details() -> None:
    resp, body, node = await _put(RuntimeError("secret detail"), "", {"a": 1})
    assert resp.status == 500
    assert body["error"] == "internal" and "secret detail" not in body["message"]
    assert node.metrics.requests == [("put", 500)]


async def test_a_null_concept_is_refused_before_any_write() -> None:
    for query in ("", "?consistency=strong"):
        # the node would raise if the route reached it
        resp, body, node = await _put(RuntimeError("written"), query, None)
        assert resp.status == 400
        assert body["error"] == "invalid" and "DELETE" in body["message"]
        assert node.metrics.requests == [("put", 400)]


async def test_a_refused_membership_change_is_409_with_its_reason() -> None:
    node = _Node(consensus.MembershipError("transfer_failed", "node-2 did not take over"))
    async with _serving(node) as client:
        resp = await client.post("/v1/leader/transfer", json={"to": "node-2"})
        body = await resp.json()
    assert resp.status == 409
    assert body == {"error": "transfer_failed", "message": "node-2 did not take over"}
    assert node.metrics.requests == [("transfer", 409)]


async def test_a_member_addition_runs_on_the_callers_deadline_or_is_refused() -> None:
    node = _Node(consensus.MembershipError("not_caught_up", "node-4 did not catch up"))
    async with _serving(node) as client:
        resp = await client.post("/v1/members", json={"id": "node-4", "address": "h:7000",
                                                      "timeout": 2.5})
        assert resp.status == 409 and (await resp.json())["error"] == "not_caught_up"
        assert node.added == ("node-4", "h:7000", 2.5)
        await client.post("/v1/members", json={"id": "node-4", "address": "h:7000"})
        assert node.added[2] == api.ADD_MEMBER_TIMEOUT
        node.added = ()
        for bad in (0, -1, "5", True, 10_000, None):
            resp = await client.post("/v1/members", json={"id": "node-4", "address": "h:7000",
                                                          "timeout": bad})
            assert resp.status == 400, bad
            assert "timeout" in (await resp.json())["message"]
        assert node.added == ()  # refused before the node was asked

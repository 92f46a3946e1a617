"""How the HTTP API reports a node's refusals: the status, the error code and what is safe."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from continuum.federation.distributed import api, errors
from continuum.federation.distributed.transport import tls


class _Metrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.append((route, status))


class _Services:
    """Stand-ins for the concept and membership services: each call raises ``error``."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.calls: list[tuple[Any, ...]] = []

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args + tuple(kwargs.values()))
        if self.error is not None:
            raise self.error
        return {}

    put_strong = put_eventual = get = delete_strong = delete_eventual = _fail
    add_member = remove_member = transfer_leadership = force_new_cluster = revoke = _fail

    def revocations(self) -> dict[str, Any]:
        self.calls.append(("revocations",))
        return {}

    def list(self, after: Any, limit: int) -> list[str]:
        self.calls.append(("list", after, limit))
        return []


ADMIN = tls.Identity(uris=frozenset({tls.role_uri("admin")}))


@contextlib.asynccontextmanager
async def serving(error: BaseException | None, node_id: str = "node-1",
                  identity: tls.Identity | None = ADMIN,
                  ) -> AsyncIterator[tuple[TestClient[Any, Any], _Services, _Metrics]]:
    """The API routes over stand-in services, and a client for them (whose certificate
    is ``identity``: the admin's unless told otherwise)."""
    fake, metrics = _Services(error), _Metrics()
    services = api.Services(node_id, fake, fake, None, fake, dict,  # type: ignore[arg-type]
                            metrics, is_revoked=lambda i: i.fingerprint == "f" * 64,
                            identity_of=lambda request: identity)
    app = web.Application()
    api.mount(app, services)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, fake, metrics


async def _put(error: BaseException, query: str, value: Any
               ) -> tuple[web.Response, dict[str, Any], _Metrics]:
    async with serving(error) as (client, _, metrics):
        resp = await client.put(f"/v1/concepts/c1{query}",
                                data="null" if value is None else json.dumps(value),
                                headers={"Content-Type": "application/json"})
        return resp, await resp.json(), metrics  # type: ignore[return-value]


@pytest.mark.parametrize(("error", "status", "code"), [
    (errors.InvalidInput("bad"), 400, "invalid"),
    (errors.NotFound("no c1"), 404, "not_found"),
    (errors.WrongConsistency("c1", "strong"), 409, "wrong_consistency"),
    (errors.MembershipError("busy", "another change"), 409, "busy"),
    (errors.NotLeader("node-2", "127.0.0.12:7000"), 421, "not_leader"),
    (errors.Unavailable("no quorum"), 503, "unavailable"),
    (errors.Overloaded("raft inbox full"), 503, "overloaded"),
    (errors.OutcomeUnknown(), 504, "outcome_unknown"),
])
async def test_every_error_of_the_hierarchy_has_its_status(
        error: errors.FederationError, status: int, code: str) -> None:
    resp, body, metrics = await _put(error, "?consistency=strong", {"a": 1})
    assert (resp.status, body["error"]) == (status, code)
    assert body["message"] == str(error)
    assert metrics.requests == [("put", status)]
    # a client reads the same error back from the answer
    decoded = errors.from_answer(resp.status, body)
    assert type(decoded) is type(error) and decoded.code == code


async def test_not_leader_says_where_the_leader_is() -> None:
    resp, body, _ = await _put(errors.NotLeader("node-2", "127.0.0.12:7000"), "", {"a": 1})
    assert resp.status == 421
    assert (body["leader_id"], body["leader_address"]) == ("node-2", "127.0.0.12:7000")


async def test_an_overloaded_node_answers_503_with_retry_after() -> None:
    resp, body, _ = await _put(errors.Overloaded("raft inbox full"), "?consistency=strong",
                               {"a": 1})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "inbox full" in body["message"]


async def test_a_write_of_unknown_outcome_is_504_and_says_how_to_retry() -> None:
    resp, body, _ = await _put(errors.OutcomeUnknown(), "?consistency=strong", {"a": 1})
    assert resp.status == 504
    assert body["error"] == "outcome_unknown" and "Idempotency-Key" in body["message"]


async def test_an_unexpected_error_is_a_json_500_without_its_details() -> None:
    for bug in (RuntimeError("secret detail"), ValueError("secret detail"),
                TimeoutError("secret detail")):
        resp, body, metrics = await _put(bug, "", {"a": 1})
        assert resp.status == 500
        assert body["error"] == "internal" and "secret detail" not in body["message"]
        assert metrics.requests == [("put", 500)]


async def test_a_null_concept_is_refused_before_any_write() -> None:
    for query in ("", "?consistency=strong"):
        # the service would raise if the route reached it
        resp, body, metrics = await _put(RuntimeError("written"), query, None)
        assert resp.status == 400
        assert body["error"] == "invalid" and "DELETE" in body["message"]
        assert metrics.requests == [("put", 400)]


async def test_a_refused_membership_change_is_409_with_its_reason() -> None:
    error = errors.MembershipError("transfer_failed", "node-2 did not take over")
    async with serving(error) as (client, _, metrics):
        resp = await client.post("/v1/leader/transfer", json={"to": "node-2"})
        body = await resp.json()
    assert resp.status == 409
    assert body == {"error": "transfer_failed", "message": "node-2 did not take over"}
    assert metrics.requests == [("transfer", 409)]


async def test_a_member_addition_runs_on_the_callers_deadline_or_is_refused() -> None:
    error = errors.MembershipError("not_caught_up", "node-4 did not catch up")
    async with serving(error) as (client, fake, _):
        resp = await client.post("/v1/members", json={"id": "node-4", "address": "h:7000",
                                                      "timeout": 2.5})
        assert resp.status == 409 and (await resp.json())["error"] == "not_caught_up"
        assert fake.calls[-1] == ("node-4", "h:7000", 2.5)
        await client.post("/v1/members", json={"id": "node-4", "address": "h:7000"})
        assert fake.calls[-1][2] == api.ADD_MEMBER_TIMEOUT
        fake.calls.clear()
        for bad in (0, -1, "5", True, 10_000, None):
            resp = await client.post("/v1/members", json={"id": "node-4", "address": "h:7000",
                                                          "timeout": bad})
            assert resp.status == 400, bad
            assert "timeout" in (await resp.json())["message"]
        assert fake.calls == []  # refused before the service was asked

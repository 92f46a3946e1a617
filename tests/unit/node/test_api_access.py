"""Who may call what, and what a body may hold: roles on every route, strict input.

The routes run over stand-in services (``test_api_errors.serving``); each refusal
comes before the service is asked, so nothing changes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from continuum.federation.distributed import api, errors, http_util
from continuum.federation.distributed.transport import tls
from unit.node.test_api_errors import serving

ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/v1/status", "read", None),
    ("GET", "/v1/route", "read", None),
    ("GET", "/v1/concepts", "read", None),
    ("GET", "/v1/concepts/c1", "read", None),
    ("GET", "/v1/revocations", "read", None),
    ("PUT", "/v1/concepts/c1", "write", {"a": 1}),
    ("PUT", "/v1/concepts/c1?consistency=strong", "write", {"a": 1}),
    ("DELETE", "/v1/concepts/c1", "write", None),
    ("POST", "/v1/members", "admin", {"id": "node-4", "address": "h:7000"}),
    ("DELETE", "/v1/members/node-3", "admin", None),
    ("POST", "/v1/leader/transfer", "admin", {}),
    ("POST", "/v1/cluster/force-new-cluster", "admin", {"confirm": "node-1"}),
    ("POST", "/v1/backup", "admin", None),
    ("POST", "/v1/revocations", "admin", {"fingerprint": "a" * 64}),
]


def _holder(role: str | None) -> tls.Identity | None:
    if role == "none":
        return tls.Identity(dns=frozenset({"x"}))  # a certificate with no API role
    if role == "node":
        return tls.Identity(dns=frozenset({"node-2"}), uris=frozenset({tls.NODE_ROLE_URI}))
    if role == "revoked-admin":
        return tls.Identity(uris=frozenset({tls.role_uri("admin")}), fingerprint="f" * 64)
    return None if role is None else tls.Identity(uris=frozenset({tls.role_uri(role)}))


@pytest.mark.parametrize("holder", ["read", "write", "admin", "node", "none", "revoked-admin",
                                    None])
async def test_each_role_against_each_route(holder: str | None) -> None:
    """A role grants its routes and those of the roles below it; a node certificate, one
    without a role, a revoked one or none at all grants nothing. A refusal is 403 with the
    role needed, and the service is never asked."""
    rank = {r: k for k, r in enumerate(tls.API_ROLES)}
    async with serving(None, identity=_holder(holder)) as (client, fake, _):
        for method, path, needed, body in ROUTES:
            fake.calls.clear()
            resp = await client.request(method, path, json=body)
            allowed = holder in rank and rank[holder] >= rank[needed]
            if allowed:
                assert resp.status != 403, (holder, method, path)
                continue
            got = await resp.json()
            assert resp.status == 403, (holder, method, path)
            assert got["error"] == "forbidden" and got["role_needed"] == needed
            assert f"--role {needed}" in got["message"]
            assert fake.calls == [], (holder, method, path)


@pytest.mark.parametrize("concept_id", ["nl-test%0A", "nl-test%0D", "a%00b", "-lead", "x" * 300,
                                        "sp%20ace"])
async def test_concept_ids_are_matched_whole(concept_id: str) -> None:
    async with serving(None) as (client, fake, _):
        for method in ("PUT", "GET", "DELETE"):
            resp = await client.request(method, f"/v1/concepts/{concept_id}", json={"a": 1})
            assert resp.status == 400, (method, concept_id)
        assert fake.calls == []


@pytest.mark.parametrize(("raw", "code"), [
    ("[" * 5000 + "]" * 5000, "too_deep"),
    ('{"a":' * 65 + "1" + "}" * 65, "too_deep"),
    ('{"x": 1e400}', "invalid_json"),
    ('{"x": -Infinity}', "invalid_json"),
    ('{"x": NaN}', "invalid_json"),
    ('{"x": 18446744073709551616}', "invalid_json"),
    ('{"x": ' + "9" * 5000 + "}", "invalid_json"),
], ids=["5000-levels", "65-levels", "1e400", "-Infinity", "NaN", "2^64", "5000-digits"])
async def test_bodies_hold_standard_finite_json_only(raw: str, code: str) -> None:
    async with serving(None) as (client, fake, _):
        for query in ("", "?consistency=strong"):
            resp = await client.put(f"/v1/concepts/c1{query}", data=raw,
                                    headers={"Content-Type": "application/json"})
            body = await resp.json()
            assert (resp.status, body["error"]) == (400, code), raw[:40]
        assert fake.calls == []


async def test_the_deepest_allowed_body_and_big_finite_numbers_pass() -> None:
    raw = '{"a":' * (http_util.MAX_DEPTH - 1) + '[1.5e300, -9223372036854775808]' \
        + "}" * (http_util.MAX_DEPTH - 1)
    async with serving(None) as (client, fake, _):
        resp = await client.put("/v1/concepts/c1", data=raw)
        assert resp.status == 200
        assert len(fake.calls) == 1


def test_brackets_in_strings_and_18_digit_integers_pass() -> None:
    """The walk over a parsed body is skipped when it cannot find anything; it still runs
    (and passes) when strings hold more brackets than MAX_DEPTH."""
    bracketed = {"text": "[{" * http_util.MAX_DEPTH, "n": -999_999_999_999_999_999}
    assert http_util.parse_json(orjson.dumps(bracketed)) == bracketed
    assert http_util.parse_json(b"[999999999999999999]") == [999_999_999_999_999_999]
    with pytest.raises(errors.InvalidInput):
        http_util.parse_json(b"[" * (http_util.MAX_DEPTH + 1) + b"]" * (http_util.MAX_DEPTH + 1))


async def test_every_oversized_body_is_413_declared_or_chunked() -> None:
    big = b'{"x": "' + b"y" * http_util.MAX_JSON_BYTES + b'"}'

    async def chunks() -> Any:
        for k in range(0, len(big), 65536):
            yield big[k:k + 65536]

    async with serving(None) as (client, fake, _):
        declared = await client.put("/v1/concepts/c1", data=big)
        chunked = await client.put("/v1/concepts/c1", data=chunks())
        for resp in (declared, chunked):
            assert resp.status == 413
            assert (await resp.json())["error"] == "too_large"
        assert fake.calls == []


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    request: Any = _StalledRequest()
    with pytest.raises(api.errors.RequestTimeout):
        await http_util.read_json(request, timeout=0.2)


class _StalledRequest:
    """A request whose client sent its headers and then nothing (a slow-body client)."""

    content_length = None

    class content:
        @staticmethod
        def is_eof() -> bool:
            return False

        @staticmethod
        async def read(n: int) -> bytes:
            await asyncio.Event().wait()
            return b""


class _ArrivedRequest:
    """A request whose whole body came in with its headers (chunked: no length declared)."""

    content_length = None

    def __init__(self, body: bytes) -> None:
        self.content = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())
        self.content.feed_data(body)
        self.content.feed_eof()


class _Protocol:
    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self, resume_parser: bool = True) -> None: ...


async def test_a_body_that_arrived_with_its_headers_is_read_and_held_to_the_limit() -> None:
    assert await http_util.read_json(_ArrivedRequest(b'{"a": 1}')) == {"a": 1}
    with pytest.raises(api.errors.TooLarge):
        await http_util.read_body(_ArrivedRequest(b"x" * 101), limit=100)


@pytest.mark.parametrize("body", [
    {"id": "x", "address": "nope"},
    {"id": "x", "address": "h:0"},
    {"id": "x", "address": "h:99999"},
    {"id": "x", "address": "bad host:7000"},
    {"id": "x\n", "address": "h:7000"},
    {"id": "urn:continuum:role:node", "address": "h:7000"},
    {"id": "*.local", "address": "h:7000"},
], ids=["no-port", "port-0", "port-too-big", "space-in-host", "id-newline", "id-uri",
        "id-wildcard"])
async def test_member_ids_and_addresses_are_checked_before_anything_changes(
        body: dict[str, Any]) -> None:
    async with serving(None) as (client, fake, _):
        resp = await client.post("/v1/members", json=body)
        assert resp.status == 400 and (await resp.json())["error"] == "invalid"
        assert fake.calls == []


async def test_a_revocation_names_a_certificate() -> None:
    async with serving(None) as (client, fake, _):
        for body in ({}, {"fingerprint": "zz"}, {"certificate": "not pem"},
                     {"fingerprint": "a" * 64, "certificate": "x"}):
            resp = await client.post("/v1/revocations", json=body)
            assert resp.status == 400, body
        assert fake.calls == []
        resp = await client.post("/v1/revocations", json={"fingerprint": "AB" * 32})
        assert resp.status == 200
        assert fake.calls == [(["ab" * 32], None, "revoked by an admin")]


def test_json_refusals_are_the_package_errors() -> None:
    with pytest.raises(api.errors.InvalidInput):
        http_util.parse_json(b"[" * 100 + b"]" * 100)
    assert http_util.parse_json(json.dumps({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
    assert isinstance(web.Response, type)

"""A small client for the node HTTP API over mutual TLS (used by the CLI, tests and examples)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from . import errors
from .transport import tls

T = TypeVar("T")

# Failures that happen before a request is sent: the next node may be tried safely.
NOT_REACHED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# Answers that refuse a call without doing it: not the leader (421), unavailable or
# overloaded (503). Any of these may be sent again, to another node or later.
REFUSED = (errors.NotLeader.http_status, errors.Unavailable.http_status)
# A write whose outcome is unknown (504) may be sent again only with the idempotency
# key of its first attempt: the node then applies it at most once.
UNKNOWN = errors.OutcomeUnknown.http_status


def one_attempt(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """``session`` without aiohttp's silent second attempt of a GET, PUT or DELETE whose
    connection broke: the first may have been applied (a multi-master PUT would then be
    written twice, and a write reported as never sent). Retries are this module's, and
    follow the API's statuses. There is no public switch; refuse to run without it."""
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError(f"aiohttp {aiohttp.__version__} moved the switch of its silent "
                           "retries; this client cannot promise one attempt per call")
    session._retry_connection = False
    return session


class ApiError(RuntimeError):
    """An error answer; ``error`` is the package's error it stands for, when it is one."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.body = body
        self.error = errors.from_answer(status, body)


class ApiClient:
    """Calls one node's API. Use as ``async with ApiClient(url, files) as c: await c.status()``."""

    def __init__(self, base_url: str, tls_files: tls.TLSFiles, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._ctx = tls.client_context(tls_files)
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 3.0))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        self._session = one_attempt(aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ctx), timeout=self._timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, body: Any = None,
                   params: dict[str, str] | None = None, *, follow_leader: bool = True,
                   headers: dict[str, str] | None = None) -> Any:
        """One API call; a leader-only call that reached a follower (421: not carried
        out) is sent once more to the leader the follower named."""
        try:
            return await self._call(self.base_url, method, path, body, params, headers)
        except ApiError as exc:
            leader = exc.body.get("leader_address")
            if not follow_leader or exc.status != 421 or not isinstance(leader, str):
                raise
            return await self._call(f"https://{leader}", method, path, body, params, headers)

    async def _call(self, base: str, method: str, path: str, body: Any,
                    params: dict[str, str] | None, extra_headers: dict[str, str] | None) -> Any:
        if self._session is None:
            raise RuntimeError("use 'async with ApiClient(...)'")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(extra_headers or {})
        async with self._session.request(method, base + path, data=data,
                                         headers=headers, params=params) as resp:
            raw = await resp.read()
            try:
                payload = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                payload = {"error": "bad_response", "message": raw[:200].decode("utf-8", "replace")}
            if resp.status >= 400:
                if not isinstance(payload, dict):
                    payload = {"error": "error", "message": str(payload)}
                raise ApiError(resp.status, str(payload.get("error", resp.status)),
                               str(payload.get("message", "")), payload)
            return payload

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("GET", "/v1/status")
        return result

    async def put(self, concept_id: str, value: Any, *, strong: bool = False,
                  idempotency_key: str | None = None) -> dict[str, Any]:
        """A strong write always carries an idempotency key (one is made when none is
        given), so sending it again after an unknown outcome applies it at most once."""
        params = {"consistency": "strong"} if strong else None
        if strong and idempotency_key is None:
            idempotency_key = uuid.uuid4().hex
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = await self.call("PUT", f"/v1/concepts/{concept_id}", value,
                                                 params, headers=headers)
        return result

    async def get(self, concept_id: str, *, strong: bool = False) -> dict[str, Any]:
        params = {"consistency": "strong"} if strong else None
        result: dict[str, Any] = await self.call("GET", f"/v1/concepts/{concept_id}",
                                                 params=params)
        return result

    async def force_new_cluster(self, node_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Disaster recovery on this node (quorum lost for good): it becomes the sole voter.
        ``node_id`` must be the id of the node this client talks to."""
        result: dict[str, Any] = await self.call("POST", "/v1/cluster/force-new-cluster",
                                                 {"confirm": node_id}, follow_leader=False)
        return result

    async def delete(self, concept_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("DELETE", f"/v1/concepts/{concept_id}")
        return result


async def first_reachable(urls: list[str], tls_files: tls.TLSFiles,
                          fn: Callable[[ApiClient], Awaitable[T]], *, timeout: float = 10.0,
                          wait: float = 0.0, idempotent: bool = False) -> T:
    """``fn`` on the first node of ``urls`` that takes the call. Nodes that are down are
    skipped; an answer from a node, error or not, is final, except refusals that nothing
    was done for (421 not the leader, 503 unavailable or overloaded) and, for an
    ``idempotent`` call (a read, or a write that carries the same idempotency key on
    every attempt), 504 outcome unknown. While no node takes the call (every one down,
    or the cluster between leaders) rounds repeat, with backoff, for up to ``wait``
    seconds."""
    if not urls:
        raise ValueError("no node to call")
    deadline = time.monotonic() + wait
    backoff = 0.05
    while True:
        failures: list[str] = []
        refusal: ApiError | None = None
        for url in urls:
            try:
                async with ApiClient(url, tls_files, timeout=timeout) as c:
                    return await fn(c)
            except NOT_REACHED as exc:
                failures.append(f"{url} ({_reason(exc)})")
            except ApiError as exc:
                if not (exc.status in REFUSED or (idempotent and exc.status == UNKNOWN)):
                    raise
                refusal = exc
                failures.append(f"{url} ({exc.code})")
        if time.monotonic() + backoff > deadline:
            if refusal is not None:
                raise refusal
            raise ConnectionError("no node answered: " + ", ".join(failures))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 1.0)


def _reason(exc: Exception) -> str:
    """Why a node was not reached, in a few words (the OS error when there is one)."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return type(exc).__name__


def local_cluster(data_dir: str | Path) -> tuple[list[dict[str, str]], tls.TLSFiles]:
    """The nodes and the admin client certificate of a cluster started by ``local up``."""
    d = Path(data_dir)
    nodes_file = d / "nodes.json"
    if not nodes_file.is_file():
        raise FileNotFoundError(f"no local cluster at {d} (missing nodes.json); "
                                "start one with 'continuum-federation local up'")
    nodes: list[dict[str, str]] = json.loads(nodes_file.read_text())
    pki_dir = d / "pki"
    return nodes, tls.TLSFiles(str(pki_dir / "client.crt"), str(pki_dir / "client.key"),
                               str(pki_dir / "ca.crt"))

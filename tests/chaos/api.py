"""The clients' side of the node API: one call, one answer, never a retry.

The harness does not use the project's client library on purpose: that library
follows redirects and retries refusals, and the history must record what each
single request was answered (so aiohttp's own quiet retry is off too). Every
failure becomes an ``Answer`` with no status and a reason, never an exception,
so a client loop cannot die of one.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from continuum.federation.distributed import client

from .history import NOT_SENT

CONNECT_TIMEOUT = 1.0  # a connection not open by then was never sent anything


@dataclass(frozen=True, slots=True)
class Answer:
    status: int | None  # None: no answer (``code`` says why)
    code: str | None  # the API's error code, or why there was no answer
    body: Any = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def session(ctx: ssl.SSLContext, limit: int = 8) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=limit))
    # aiohttp silently sends a GET or PUT again when its connection breaks, and reports
    # only the second attempt: a PUT applied by the first would read as "not sent".
    client.one_attempt(http)
    return http


async def call(http: aiohttp.ClientSession, base_url: str, method: str, path: str, *,
               body: Any = None, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None, timeout: float = 5.0) -> Answer:
    data = None if body is None else json.dumps(body)
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    limits = aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
    try:
        async with http.request(method, base_url + path, data=data, params=params,
                                headers=hdrs, timeout=limits) as resp:
            raw = await resp.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = raw[:200].decode("utf-8", "replace")
            code = payload.get("error") if isinstance(payload, dict) and resp.status >= 400 \
                else None
            return Answer(resp.status, code, payload)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        return Answer(None, NOT_SENT)  # no connection: the request never left
    except TimeoutError:
        return Answer(None, "client_timeout")
    except aiohttp.ClientError as exc:  # reset or closed after the request went out
        return Answer(None, type(exc).__name__)

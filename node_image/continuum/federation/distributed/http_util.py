"""Small helpers shared by the node's HTTP handlers: JSON bodies in and out, JSON errors.

JSON goes through orjson (several times faster than the standard library, on every
request); a body with an integer too long for it (orjson would read it as a float,
silently) is read by the standard library instead, so it means what it says.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from aiohttp import web

MAX_JSON_BYTES = 4 * 1024 * 1024
JSON_TYPE = "application/json"
_LONG_INTEGER = re.compile(rb"\d{19,}")  # past what orjson reads exactly (64 bits)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type=JSON_TYPE)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status=status)


def loads(raw: bytes) -> Any:
    """JSON text as Python values; ``ValueError`` when it is not JSON."""
    if _LONG_INTEGER.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; raises ``web.HTTPException`` with a JSON error when it is not."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_JSON_BYTES,
                                            actual_size=request.content_length)
    raw = await request.read()
    if not raw:
        raise _bad("empty_body", "a JSON body is required")
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("invalid_json", f"body is not valid JSON: {exc}") from None


def _bad(code: str, message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": code, "message": message}),
                              content_type=JSON_TYPE)

"""Small helpers shared by the node's HTTP handlers: JSON errors and body parsing."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_JSON_BYTES = 4 * 1024 * 1024


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; raises ``web.HTTPException`` with a JSON error when it is not."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_JSON_BYTES,
                                            actual_size=request.content_length)
    raw = await request.read()
    if not raw:
        raise _bad("empty_body", "a JSON body is required")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad("invalid_json", f"body is not valid JSON: {exc}") from None


def _bad(code: str, message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": code, "message": message}),
                              content_type="application/json")

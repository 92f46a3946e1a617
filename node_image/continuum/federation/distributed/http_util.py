"""Small helpers shared by the node's HTTP handlers: JSON bodies in and out, JSON errors.

A body is read up to ``MAX_JSON_BYTES`` whatever its framing (a declared length or
chunks), within ``read_timeout`` seconds, and parsed as standard JSON only: finite
numbers (no ``NaN``, ``Infinity`` or ``1e400``, which would be stored and read back
as non-standard JSON), integers that fit 64 bits, at most ``MAX_DEPTH`` levels of
nesting. Anything else is one of the package's errors (400, 408, 413) and nothing
is stored.

JSON goes through orjson (several times faster than the standard library, on every
request); a body with an integer too long for it (orjson would read it as a float,
silently) is read by the standard library instead, so it means what it says.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import orjson
from aiohttp import web

from . import errors

MAX_JSON_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64  # as the multi-master store's values (core.crdt.values.MAX_DEPTH)
READ_TIMEOUT_SECONDS = 20.0
_INT_BOUNDS = (-(2**63), 2**64 - 1)  # what msgpack, and so the log and the wire, carry
JSON_TYPE = "application/json"
_LONG_INTEGER = re.compile(rb"\d{19,}")  # past what orjson reads exactly (64 bits)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type=JSON_TYPE)


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status=status)


async def read_body(request: web.BaseRequest, limit: int = MAX_JSON_BYTES,
                    timeout: float = READ_TIMEOUT_SECONDS) -> bytes:
    """The request's body, at most ``limit`` bytes however it is framed: ``TooLarge``
    beyond (before reading when the length is declared), ``RequestTimeout`` when it does
    not arrive within ``timeout`` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.TooLarge(f"body of {request.content_length} bytes exceeds the limit of "
                              f"{limit} bytes")
    if request.content.is_eof():
        # The whole body came in with the headers (most writes): nothing to wait for, so
        # no timer (arming and cancelling one is measurable at thousands per second).
        body = request.content.read_nowait(-1)
        if len(body) > limit:
            raise errors.TooLarge(f"body exceeds the limit of {limit} bytes")
        return body
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await request.content.read(min(65536, limit + 1 - len(buf))):
                buf += chunk
                if len(buf) > limit:
                    raise errors.TooLarge(f"body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise errors.RequestTimeout(f"the body did not arrive within {timeout:g} s") from None
    return bytes(buf)


async def read_json(request: web.BaseRequest,
                    timeout: float = READ_TIMEOUT_SECONDS) -> Any:
    """The request's JSON body, held to the rules of the module docstring."""
    raw = await read_body(request, MAX_JSON_BYTES, timeout)
    if not raw:
        raise errors.InvalidInput("a JSON body is required", code="empty_body")
    return parse_json(raw)


def parse_json(raw: bytes | str) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    long_integer = _LONG_INTEGER.search(data) is not None
    try:
        if long_integer:
            value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
        else:
            value = orjson.loads(data)  # refuses NaN, Infinity and 1e400 itself
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and ours below
        if "depth limit" in str(exc):  # orjson stops at 1024 levels
            raise _too_deep() from None
        raise errors.InvalidInput(f"body is not valid JSON: {exc}", code="invalid_json"
                                  ) from None
    # Without a long integer every number has at most 18 digits and fits 64 bits, and a
    # body with no more brackets than MAX_DEPTH cannot nest deeper: no walk needed.
    if long_integer or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        check_value(value)
    return value


def check_value(value: Any) -> None:
    """``InvalidInput`` for a value nested deeper than ``MAX_DEPTH`` or holding an
    integer that does not fit 64 bits (walked without recursion)."""
    if not isinstance(value, dict | list):
        _check_scalar(value)
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            children = v.values() if isinstance(v, dict) else v
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | int))
        else:
            _check_scalar(v)


def _check_scalar(v: Any) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and not (
            _INT_BOUNDS[0] <= v <= _INT_BOUNDS[1]):
        raise errors.InvalidInput(f"integer {v} does not fit 64 bits", code="invalid_json")


def _too_deep() -> errors.InvalidInput:
    return errors.InvalidInput(f"JSON nested deeper than {MAX_DEPTH} levels",
                               code="too_deep")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; numbers must be finite")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} does not fit a finite number")
    return number

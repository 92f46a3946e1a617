"""Waiting in tests: on a condition, within a bound, saying what was last seen.

Every wait of the process-level tests (tests/e2e, tests/integration) goes through
here (tests/unit/test_waits.py checks it): a test that times out then reports the
last observation, or the last error, instead of only "timed out".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

INTERVAL = 0.05


def _timed_out(what: str, timeout: float, last: Any, error: BaseException | None) -> str:
    seen = f"last seen: {last!r}" if error is None else f"last error: {error!r}"
    return f"timed out after {timeout:g} s waiting for {what}; {seen}"


async def until(observe: Callable[[], T | Awaitable[T]], done: Callable[[T], Any] = bool, *,
                timeout: float, what: str, interval: float = INTERVAL,
                errors: tuple[type[BaseException], ...] = ()) -> T:
    """Observe until ``done(observation)``; return that observation. ``errors`` raised by
    ``observe`` count as "not yet" (a node still starting) and are reported if it never
    comes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            got = observe()
            value: T = await got if inspect.isawaitable(got) else got  # type: ignore[assignment]
        except errors as exc:
            error = exc
        else:
            if done(value):
                return value
            last, error = value, None
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, last, error))
        await asyncio.sleep(interval)


def until_sync(observe: Callable[[], T], done: Callable[[T], Any] = bool, *, timeout: float,
               what: str, interval: float = INTERVAL,
               errors: tuple[type[BaseException], ...] = ()) -> T:
    """``until`` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            value = observe()
        except errors as exc:
            error = exc
        else:
            if done(value):
                return value
            last, error = value, None
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, last, error))
        time.sleep(interval)

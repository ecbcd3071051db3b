"""The one way tests wait for a condition that has no event to await (files an agent
places, API answers, controller state): poll, and on timeout fail saying what was awaited
and, when given, the evidence (logs, last state)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _failure(what: str, timeout: float, details: Callable[[], str] | None) -> AssertionError:
    extra = f"\n{details()}" if details is not None else ""
    return AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")


def wait_until(
    cond: Callable[[], T],
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``cond`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _failure(what, timeout, details)
        time.sleep(interval)


async def until(
    cond: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Async :func:`wait_until`; ``cond`` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _failure(what, timeout, details)
        await asyncio.sleep(interval)

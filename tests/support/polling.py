"""Polling: wait for a condition that something else (a broker, an agent, an app) makes true.

One contract for every suite: poll ``check`` every ``every`` seconds until it returns something
truthy and return that value; after ``limit`` seconds fail with an AssertionError naming
``what`` and the last value seen, so a timeout reads as the assertion it stands for.

``until`` is for a test's event loop and takes a plain or an async ``check``; ``until_blocking``
is the same for code that runs outside a loop (threads, subprocesses, blocking clients).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

LIMIT = 20.0  # seconds: generous for a loaded machine; a passing test never waits it out
EVERY = 0.05  # seconds between two checks


@overload
async def until(
    check: Callable[[], Awaitable[T | None]],
    limit: float = ...,
    what: str = ...,
    *,
    every: float = ...,
) -> T: ...


@overload
async def until(
    check: Callable[[], T | None],
    limit: float = ...,
    what: str = ...,
    *,
    every: float = ...,
) -> T: ...


async def until(
    check: Callable[[], Any],
    limit: float = LIMIT,
    what: str = "the condition",
    *,
    every: float = EVERY,
) -> Any:
    """The first truthy value of ``check`` (awaited if it is a coroutine function's result)."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if _done(value, deadline, limit, what):
            return value
        await asyncio.sleep(every)


def until_blocking(
    check: Callable[[], T | None],
    limit: float = LIMIT,
    what: str = "the condition",
    *,
    every: float = EVERY,
) -> T:
    """``until`` outside an event loop: sleeps the thread between checks."""
    deadline = time.monotonic() + limit
    while not _done(value := check(), deadline, limit, what):
        time.sleep(every)
    assert value is not None  # _done holds only for a truthy value
    return value


def _done(value: object, deadline: float, limit: float, what: str) -> bool:
    """Whether ``value`` ends the wait; past the deadline a falsy one fails it."""
    if value:
        return True
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {limit} s waiting for {what} (last: {value!r})")
    return False

"""Async servers in a thread of their own, so a synchronous test (paho, sockets) can talk to them.

A subclass says what it serves in ``serving``: an async context manager, entered on the
thread's own event loop, that yields once everything listens. ``with`` starts the thread and
waits for that; leaving the block stops the servers and joins the thread. An error of the
thread (starting, serving or stopping) is raised in the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Self, TypeVar

T = TypeVar("T")


class LoopThread:
    """See the module docstring; ``name`` and the limits are the subclass's to tune."""

    name = "loop"
    start_limit = 10.0  # seconds ``serving`` may take to yield
    stop_limit = 15.0  # seconds leaving ``serving`` may take

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def serving(self) -> AbstractAsyncContextManager[None]:
        """Set up the servers; yield while they serve; tear them down."""
        raise NotImplementedError

    def run(self, work: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Call and await ``work`` on the thread's loop; its result (or its error) here."""
        assert self._loop is not None, "the thread is not serving: enter it with `with` first"

        async def wrapped() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(timeout)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(self.start_limit):
            raise TimeoutError(f"The {self.name} did not start within {self.start_limit:.0f} s.")
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.stop_limit)
        assert not self._thread.is_alive(), (
            f"the {self.name} did not stop within {self.stop_limit:.0f} s"
        )
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.serving():
            self._ready.set()
            await self._stop.wait()

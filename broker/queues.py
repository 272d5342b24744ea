"""A small queue for per-session state that is almost always empty.

amqtt gives every session and handler four ``asyncio.Queue`` objects (offline messages, QoS 2
deliveries, pending subscriptions and unsubscriptions); an empty asyncio.Queue holds four deques
and an Event, about 2.4 KiB. With the fast path they mostly stay empty, so this queue allocates
nothing until the first item and keeps the part of the Queue API amqtt uses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["LazyQueue"]

T = TypeVar("T")


class LazyQueue(Generic[T]):
    """Unbounded FIFO with ``put``/``put_nowait``/``get``/``get_nowait``/``empty``/``qsize``,
    and iteration in order without taking anything (for a snapshot of the session)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def __iter__(self) -> Iterator[T]:
        return iter(self._items or ())

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None  # give the deque's block back
        return item

    async def get(self) -> T:
        while not self._items:
            if self._waiter is None or self._waiter.done():
                self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.get_nowait()

"""The lazy per-session queue behaves as the part of asyncio.Queue that amqtt uses."""

from __future__ import annotations

import asyncio

import pytest

from broker.queues import LazyQueue


def test_fifo_and_sizes() -> None:
    """Items come out in order; empty() and qsize() follow puts and gets."""
    queue: LazyQueue[int] = LazyQueue()
    assert queue.empty()
    assert queue.qsize() == 0
    for item in (1, 2, 3):
        queue.put_nowait(item)
    assert queue.qsize() == 3
    assert not queue.empty()
    assert [queue.get_nowait() for _ in range(3)] == [1, 2, 3]
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_get_waits_for_a_put() -> None:
    """An awaiting get() is woken by the next put, and put() never blocks."""
    queue: LazyQueue[str] = LazyQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put("x")
    assert await asyncio.wait_for(getter, 1) == "x"

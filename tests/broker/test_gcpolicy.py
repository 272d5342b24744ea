"""The server process keeps long-lived objects out of full garbage collections."""

from __future__ import annotations

import asyncio
import gc
import weakref

from broker import freeze_long_lived


async def test_freezes_survivors_and_collects_fully_on_schedule() -> None:
    """Objects alive at a tick are frozen; a full pass unfreezes, collects, freezes again;
    stopping the task unfreezes everything."""
    gc.unfreeze()
    task = asyncio.create_task(freeze_long_lived(0.05, 0.3))
    try:
        await asyncio.sleep(0.15)
        assert gc.get_freeze_count() > 0
        garbage: list[object] = []
        garbage.append(garbage)  # a cycle only the collector can reclaim
        del garbage
        await asyncio.sleep(0.4)  # past a full pass
        assert gc.get_freeze_count() > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector reclaims it


async def test_young_cyclic_garbage_is_collected_not_frozen() -> None:
    """Garbage made between two ticks is reclaimed at the next tick, long before a full pass.

    Frozen, it would stay until the full pass (every ten minutes by default): measured at
    10,000 nodes, 1.5 KiB per idle connection.
    """
    gc.unfreeze()
    task = asyncio.create_task(freeze_long_lived(0.05, 3600.0))
    try:
        await asyncio.sleep(0.12)  # a first freeze
        gc.disable()  # only the policy collects from here on
        node = _Node()
        gone = weakref.ref(node)
        del node
        assert gone() is not None
        await asyncio.sleep(0.15)  # a tick or two, no full pass
        assert gone() is None
    finally:
        gc.enable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0


async def test_garbage_that_reached_the_oldest_generation_is_collected_not_frozen() -> None:
    """Garbage promoted to the oldest generation since the last tick is reclaimed at the next.

    Under a flood of refused TLS handshakes the collector's automatic passes promote the
    handshakes in progress to the oldest generation; collecting the young generations alone
    before freezing left them frozen until the full pass.
    """
    gc.unfreeze()
    task = asyncio.create_task(freeze_long_lived(0.05, 3600.0))
    try:
        await asyncio.sleep(0.12)  # a first freeze
        gc.disable()  # only the policy collects from here on
        node = _Node()
        gone = weakref.ref(node)
        gc.collect(1)  # survivors of generation 1 move to the oldest one
        del node
        assert gone() is not None
        await asyncio.sleep(0.15)  # a tick or two, no full pass
        assert gone() is None
    finally:
        gc.enable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0

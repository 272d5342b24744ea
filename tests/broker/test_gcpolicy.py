"""The server process keeps long-lived objects out of full garbage collections."""

from __future__ import annotations

import asyncio
import gc

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

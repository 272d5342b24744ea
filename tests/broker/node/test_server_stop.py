"""The node broker's background tasks end when cancelled, even right after their event was set
(SIGTERM under a stream of commits: each sets the status task's event)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from broker.node.server import STATUS_INTERVAL, NodeBrokerServer
from tests.support.polling import until


async def test_the_status_task_ends_when_cancelled_right_after_a_change(tmp_path: Path) -> None:
    server: Any = NodeBrokerServer.__new__(NodeBrokerServer)
    written: list[int] = []
    server._write_status = lambda broker, spool: written.append(1)
    broker = SimpleNamespace(changed=asyncio.Event(), refusals=SimpleNamespace(total=0))
    task = asyncio.create_task(server._status(broker, None))
    await until(lambda: written, what="the first status")
    # Past its pause after a write (STATUS_INTERVAL), it waits for the next change.
    await asyncio.sleep(STATUS_INTERVAL + 0.2)
    assert not task.done()
    broker.changed.set()  # a commit, just before SIGTERM cancels the task
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=20)
    if not done:
        task.cancel()  # a second try, so the test ends
        await asyncio.wait([task], timeout=20)
    assert done, "the status task did not end when cancelled"

"""The per-address handshake gate: slots handed over in order, none lost to a cancelled wait."""

from __future__ import annotations

import asyncio

from broker.admission import MAX_WAITING, HandshakeGate


async def test_a_freed_slot_goes_to_the_first_waiting_and_other_addresses_never_wait() -> None:
    """With its slots taken an address queues; another address enters at once; leave hands the
    slot to the oldest waiting connection."""
    gate = HandshakeGate(per_source=1)
    await gate.enter("a")
    first = asyncio.create_task(gate.enter("a"))
    second = asyncio.create_task(gate.enter("a"))
    await asyncio.sleep(0)
    assert not first.done()
    await asyncio.wait_for(gate.enter("b"), 0.1)  # not held up by "a"
    gate.leave("a")
    await asyncio.sleep(0)
    assert first.done()
    assert not second.done()
    assert gate.in_progress("a") == 1


async def test_a_wait_cancelled_by_its_timeout_loses_no_slot() -> None:
    """A connection that times out waiting gives nothing away; one cancelled just as a slot was
    handed to it passes the slot on."""
    gate = HandshakeGate(per_source=1)
    await gate.enter("a")
    timed_out = asyncio.create_task(gate.enter("a"))
    unlucky = asyncio.create_task(gate.enter("a"))
    last = asyncio.create_task(gate.enter("a"))
    await asyncio.sleep(0)
    timed_out.cancel()
    await asyncio.sleep(0)
    gate.leave("a")  # skips the cancelled wait, hands the slot to "unlucky"
    unlucky.cancel()  # cancelled in the same turn: it must pass the slot on to "last"
    await asyncio.gather(timed_out, unlucky, return_exceptions=True)
    await asyncio.wait_for(last, 0.1)
    assert gate.in_progress("a") == 1
    gate.leave("a")
    assert gate.in_progress("a") == 0


async def test_an_address_with_too_many_waiting_is_full_and_a_limit_of_0_is_off() -> None:
    """Past MAX_WAITING x per_source waiting connections an address is full; 0 turns it off."""
    gate = HandshakeGate(per_source=1)
    await gate.enter("a")
    waiting = [asyncio.create_task(gate.enter("a")) for _ in range(MAX_WAITING)]
    await asyncio.sleep(0)
    assert gate.full("a")
    assert not gate.full("b")
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    off = HandshakeGate(per_source=0)
    for _ in range(100):
        await asyncio.wait_for(off.enter("a"), 0.1)
    assert not off.full("a")


async def test_cancelled_waits_leave_the_queue() -> None:
    """Waits cancelled (by their timeout) no longer count as waiting: the address is not full."""
    gate = HandshakeGate(per_source=1)
    await gate.enter("a")
    waiting = [asyncio.create_task(gate.enter("a")) for _ in range(MAX_WAITING)]
    await asyncio.sleep(0)
    assert gate.full("a")
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert not gate.full("a")  # they used to stay queued until the slot's holder left
    gate.leave("a")
    assert gate.in_progress("a") == 0
    await asyncio.wait_for(gate.enter("a"), 0.1)

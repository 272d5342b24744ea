"""Store-and-forward end to end: outages while devices publish, and what arrives in the cloud.

A real ``baetyl up``, a real ``baetyl edge run --node-broker on``, devices as paho clients
publishing ``(device, seq)`` at QoS 1 through the route ``devices/+/telemetry`` →
``{cloud: telemetry/{device}}``, a consumer on a persistent session subscribed before the run
(see tests/dataplane/outage_support.py). Each test makes one fault mid-stream and checks, per
device, the first arrivals: every message there, in order; duplicates are allowed (at least
once) and printed with the tally (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.dataplane.outage_support import World, tally
from tests.support.db import sqlite_database
from tests.support.polling import until

TOTAL = 10_000  # messages per test, over the devices


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path, sqlite_database(tmp_path).url)
    try:
        yield world
    finally:
        await world.close()


async def _received(world: World, count: int, what: str) -> None:
    consumer = world.consumer
    assert consumer is not None
    await until(lambda: consumer.unique() >= count, 180, what, every=0.1)


async def _acked_more(world: World, more: int) -> None:
    """Wait until the devices got ``more`` PUBACKs (or all): the node took them meanwhile."""
    start = world.acked()
    goal = min(start + more, TOTAL)
    await until(lambda: world.acked() >= goal, 180, f"the devices to get {goal} PUBACKs", every=0.1)


async def _last_arrived(world: World) -> None:
    """Wait for each device's last message in the cloud: a route keeps its order, so what has
    not arrived by then is lost (the tally says which)."""
    consumer = world.consumer
    assert consumer is not None
    lasts = {(name, count - 1) for name, count in world.published().items()}
    await until(lambda: all(d.done() for d in world.devices), 300, "the PUBACKs", every=0.2)
    await until(
        lambda: lasts <= set(consumer.snapshot()), 300, "each device's last message", every=0.2
    )
    assert not world.errors()


def _mid_stream(world: World) -> None:
    """The fault comes while the devices still publish."""
    assert world.acked() < sum(world.published().values()), "the devices were done already"


async def _everything_arrives(world: World) -> str:
    """Wait for every message, then check they came in order; the tally's summary."""
    consumer = world.consumer
    assert consumer is not None
    await _last_arrived(world)
    result = tally(world.published(), consumer.snapshot())
    summary = (
        f"{result.summary()}; connections: devices {[d.connects for d in world.devices]}, "
        f"consumer {len(consumer.connects)}"
    )
    assert not any(result.missing.values()), summary
    assert result.in_order, summary
    print(f"\n{summary}")
    return summary


async def test_the_uplink_cut_and_restored_mid_stream_loses_nothing(world: World) -> None:
    passwords = await world.start(4)
    await world.start_devices(passwords, TOTAL // 4)
    await _received(world, 2000, "2,000 messages before the cut")
    assert world.relay is not None
    _mid_stream(world)
    await world.relay.cut()
    await _acked_more(world, 2000)  # spooled on the node while its uplink is down
    await world.relay.start()
    await _everything_arrives(world)


async def test_the_cloud_stopped_and_started_mid_stream_loses_nothing(world: World) -> None:
    """A graceful restart of ``baetyl up`` while the consumer is away: its persistent session,
    the subscription and the messages queued for it before the stop, outlives the restart, and
    takes what the node sends up after it; the node's spool holds what came meanwhile."""
    passwords = await world.start(4)
    consumer = world.consumer
    assert consumer is not None
    await world.start_devices(passwords, TOTAL // 4)
    await _received(world, 2000, "2,000 messages before the consumer goes")
    await asyncio.to_thread(consumer.pause)
    away = consumer.unique()
    await _acked_more(world, 1500)  # queued in the cloud for the consumer
    _mid_stream(world)
    await asyncio.to_thread(world.up.stop)
    await _acked_more(world, 1500)  # spooled on the node
    await world.up.start()  # the same ports, data directory and database
    await until(lambda: all(d.done() for d in world.devices), 300, "the devices' PUBACKs")
    # Everything in the cloud (the node's spool drained) before the consumer is back.
    await until(lambda: _forwarded(world, TOTAL), 300, "the node to forward every message")
    assert consumer.unique() == away
    await asyncio.to_thread(consumer.resume)
    await _everything_arrives(world)
    assert len(consumer.connects) >= 2, consumer.connects
    assert all(consumer.connects[1:]), (
        f"the consumer's session was not kept: session present per CONNACK {consumer.connects}"
    )


async def _forwarded(world: World, total: int) -> bool:
    """Whether the node reports at least ``total`` forwarded (duplicates count) and none queued."""
    stats = await world.route_stats()
    return stats.get("queued") == 0 and int(stats.get("forwarded") or 0) >= total


async def test_the_node_broker_killed_mid_stream_loses_no_acknowledged_message(
    world: World,
) -> None:
    passwords = await world.start(4)
    await world.start_devices(passwords, TOTAL // 4)
    await _received(world, 2000, "2,000 messages before the kill")
    node = world.node
    assert node is not None
    pid = node.broker_pid()
    assert pid is not None
    _mid_stream(world)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: node.broker_pid() not in (None, pid), 120, "the engine to restart it")
    await _everything_arrives(world)
    assert all(d.connects >= 2 for d in world.devices)  # each device reconnected


async def test_the_agent_killed_mid_stream_and_restarted_loses_nothing(world: World) -> None:
    passwords = await world.start(4)
    await world.start_devices(passwords, TOTAL // 4)
    await _received(world, 2000, "2,000 messages before the kill")
    node = world.node
    assert node is not None
    broker = node.broker_pid()
    _mid_stream(world)
    await node.kill_agent()
    await _acked_more(world, 2000)  # the node broker runs on and spools
    node.start()
    await _everything_arrives(world)
    assert node.broker_pid() == broker  # adopted, not restarted
    assert all(d.connects == 1 for d in world.devices)


@pytest.mark.parametrize("consumer_away", [False, True], ids=["consumer-online", "consumer-away"])
async def test_a_cloud_sigkill_loses_only_what_the_cloud_had_acknowledged_and_not_delivered(
    world: World, consumer_away: bool
) -> None:
    """PROTOCOL.md, "What a SIGKILL of the cloud can lose": the messages the cloud broker had
    acknowledged to the node but not yet delivered to the consumer. Nothing else: not what was
    still in the node's spool, not what came after, and the consumer's session (saved at the
    last graceful stop) is kept. With the consumer away for a while before the kill, the cloud
    holds more of them (queued for its session): those are the ones lost."""
    passwords = await world.start(2)
    consumer = world.consumer
    node = world.node
    assert consumer is not None
    assert node is not None
    # A graceful restart saves the consumer's session: a SIGKILL keeps the sessions as of the
    # last graceful start or stop.
    await asyncio.to_thread(world.up.stop)
    await world.up.start()
    await until(lambda: len(consumer.connects) >= 2, 60, "the consumer to reconnect")
    assert consumer.connects[-1], "the consumer's session was not kept by a graceful restart"
    await world.start_devices(passwords, TOTAL // 2)
    await _received(world, 2000, "2,000 messages before the kill")
    if consumer_away:
        await asyncio.to_thread(consumer.pause)
        await _acked_more(world, 1000)  # the node sends them up: queued in the cloud's memory
    _mid_stream(world)
    await world.up.kill()
    delivered = set(consumer.snapshot())
    # The route's cursor, saved once the link is gone: the node forgets what is below it.
    cursor = await _settled(node.route_cursor)
    assert cursor is not None
    spooled = set(node.spooled_after(cursor))
    await _acked_more(world, 1000)
    await world.up.start()
    if consumer_away:
        await asyncio.to_thread(consumer.resume)
    devices = world.published()
    await _last_arrived(world)
    assert consumer.connects[-1], f"session present per CONNACK: {consumer.connects}"
    result = tally(devices, consumer.snapshot())
    lost = {(name, seq) for name, seqs in result.missing.items() for seq in seqs}
    print(f"\n{result.summary()}; {len(spooled)} were in the spool after the kill")
    assert result.in_order, result.summary()
    assert not lost & spooled, f"lost from the node's spool: {sorted(lost & spooled)[:20]}"
    for name, seqs in result.missing.items():
        before = max((s for d, s in delivered if d == name), default=-1)
        # What the cloud had taken from the node and not handed on: right after what it had
        # delivered before it died, before what the node still held.
        assert all(s > before for s in seqs), (name, before, seqs[:20])
        held = [s for d, s in spooled if d == name]
        if held:
            assert all(s < min(held) for s in seqs), (name, min(held), seqs[:20])


async def _settled(read: Callable[[], int | None]) -> int | None:
    """A value read twice, a second apart, that did not change (a cursor the agent saved)."""
    last = read()
    while True:
        await asyncio.sleep(1.0)
        now = read()
        if now == last:
            return now
        last = now


async def test_a_full_spool_drops_the_oldest_messages_and_the_node_reports_them(
    world: World,
) -> None:
    """The cloud unreachable and the spool bounded to 16 KiB: the devices' messages all get a
    PUBACK, the oldest are dropped, the newest go up once the link is back, and the node
    reports how many were dropped."""
    count = 1500  # per device: a ~22-byte payload each, ~750 fit in 16 KiB
    passwords = await world.start(2, agent_options=("--spool-max-bytes", "16K"))
    node = world.node
    assert node is not None
    assert world.relay is not None
    node.start()
    await until(world.route_ready, 90, "the node to run the route")
    await world.relay.cut()
    await world.start_devices(passwords, count)
    await until(lambda: all(d.done() for d in world.devices), 180, "the devices' PUBACKs")
    await world.relay.start()
    consumer = world.consumer
    assert consumer is not None
    await _last_arrived(world)
    result = tally(world.published(), consumer.snapshot())
    print(f"\n{result.summary()}")
    dropped = sum(len(m) for m in result.missing.values())
    assert dropped > 0, result.summary()
    for name, seqs in result.first.items():
        # The oldest first: what arrived is each device's newest messages, without a gap.
        assert seqs == list(range(seqs[0], count)), (name, seqs[:5], len(seqs))
    # The node's reported counts (every few seconds): the drops, and nothing left queued.
    await until(
        lambda: _reported(world, dropped), 60, f"the node to report {dropped} dropped, 0 queued"
    )


async def _reported(world: World, dropped: int) -> dict[str, object] | None:
    stats = await world.route_stats()
    return stats if stats.get("dropped") == dropped and stats.get("queued") == 0 else None

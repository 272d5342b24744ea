"""PahoPublisher over a real paho client and the real broker: acknowledged, or failed."""

from __future__ import annotations

import asyncio

import pytest

from edge.dataplane.publisher import PahoPublisher, PublishFailed
from tests.broker.helpers import NODE_A, BrokerThread, Pki
from tests.edge.dataplane.conftest import Connect

UP = f"$baetyl/node/{NODE_A}/up/"


async def test_many_publishes_in_flight_resolve_in_order_at_qos_0_and_1(
    broker: BrokerThread, pki: Pki, connect: Connect
) -> None:
    sub = await connect(pki.operator)
    assert await asyncio.to_thread(sub.subscribe, UP + "#", 1) == [1]
    link = await connect(pki.node_a)
    publisher = PahoPublisher(link.client)
    futures = [publisher.submit(f"{UP}n", b"%d" % n, n % 2) for n in range(500)]
    await asyncio.wait_for(asyncio.gather(*futures), 20)
    assert publisher.pending == 0
    got = [await asyncio.to_thread(sub.receive) for _ in range(500)]
    assert [int(m.payload) for m in got] == list(range(500))


async def test_a_publish_without_a_connection_fails_at_once(
    broker: BrokerThread, pki: Pki, connect: Connect
) -> None:
    link = await connect(pki.node_a)
    publisher = PahoPublisher(link.client)
    await asyncio.to_thread(link.close)
    with pytest.raises(PublishFailed, match="Not connected"):
        await publisher.publish(f"{UP}x", b"1", 1)


async def test_a_lost_connection_fails_what_waits_and_paho_does_not_send_it_again(
    broker: BrokerThread, pki: Pki, connect: Connect
) -> None:
    """The connection cut with 10 MB in flight: what was not acknowledged fails, and leaves
    paho's queue (the router sends it again from its cursor; paho must not send it first)."""
    link = await connect(pki.node_a)
    publisher = PahoPublisher(link.client)
    futures = [publisher.submit(f"{UP}n", b"x" * 1000, 1) for _ in range(10_000)]
    await asyncio.to_thread(link.kill)
    publisher.connection_lost()  # paho's thread was stopped by kill(): say it ourselves
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 20)
    failed = [r for r in results if isinstance(r, PublishFailed)]
    assert all(r is None or isinstance(r, PublishFailed) for r in results)
    assert failed  # some were still in flight when the connection went
    assert publisher.pending == 0
    assert len(link.client._out_messages) == 0  # none left for paho to send again

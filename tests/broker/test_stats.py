"""The broker's stats: a burst of scrapes walks the sessions once, the counters stay fresh."""

from __future__ import annotations

import time

from broker import EmbeddedBroker
from broker.core import GAUGES_MAX_AGE
from tests.broker.clients import Connect
from tests.broker.helpers import NODE_A, BrokerThread, Pki, node_topic
from tests.support.polling import until_blocking


def test_scrapes_within_the_window_walk_the_sessions_once(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """Two snapshots within GAUGES_MAX_AGE walk the sessions once (a walk took 24 ms at 18,000
    sessions, and /metrics is unauthenticated); one after the window walks again."""
    node = connect(pki.node_a)
    walks: list[float] = []

    async def install(b: EmbeddedBroker) -> None:
        core = b._core
        walk = core._session_gauges

        def counted() -> tuple[dict[str, int], int, int]:
            walks.append(time.monotonic())
            return walk()

        core._session_gauges = counted  # type: ignore[method-assign]

    async def scrape(b: EmbeddedBroker) -> tuple[int, int]:
        stats = b.stats()
        return stats.connections["node"], stats.messages_received

    broker.call(install)
    started = time.monotonic()
    assert broker.call(scrape) == (1, 0)
    node.publish(node_topic(NODE_A, "report"), b"{}", qos=1)
    assert until_blocking(lambda: broker.call(scrape)[1] == 1)  # the counters are read fresh
    elapsed = time.monotonic() - started
    assert len(walks) == 1 or elapsed >= GAUGES_MAX_AGE, (len(walks), elapsed)
    time.sleep(max(0.0, GAUGES_MAX_AGE - (time.monotonic() - walks[-1])) + 0.05)
    before = len(walks)
    assert broker.call(scrape) == (1, 1)
    assert len(walks) == before + 1  # past the window: walked again

"""Keep a fleet's long-lived objects out of the cyclic garbage collector's full passes.

Ten thousand connected nodes are some five million long-lived Python objects (sessions,
transports, protocols). CPython 3.11 walks all of them on every full collection, about a
second on this machine's cores, whenever enough new objects have survived: measured, that pause
landed inside the fan-out of one message to every node often enough to double its time, and
connecting 10,000 nodes spent about a fifth of its CPU there. ``gc.freeze()`` moves everything
alive now into a generation the collector skips; doing that every few seconds, after collecting
the young generations, keeps the collector's work proportional to what is new. Objects frozen
while alive that later become cyclic garbage are not reclaimed until the next full pass, so one
runs every ``collect_every`` seconds (unfreeze, collect, freeze again).

Before each freeze the collector runs over every generation it still walks, the oldest
included: frozen objects are not in it, so this costs what is new since the last freeze, like a
young collection, but it also reclaims garbage that reached the oldest generation since then. A
collection of the young generations alone left that to be frozen: under a flood of refused TLS
handshakes the collector's own automatic passes promote the handshakes in progress to the
oldest generation, and once refused they stayed, frozen, until the full pass (measured in
bench/handshake_flood.py). The broker also frees a refused handshake without the collector
(broker/core.py); this covers whatever else dies old between two ticks.

Run by the server process (``baetyl up``, ``baetyl broker run``), not by the embedded broker
itself: the policy is the process's, and a process embedding the broker chooses its own.
"""

from __future__ import annotations

import asyncio
import gc
import logging

__all__ = ["freeze_long_lived"]

log = logging.getLogger(__name__)


async def freeze_long_lived(freeze_every: float, collect_every: float) -> None:
    """Freeze survivors every ``freeze_every`` s; collect fully every ``collect_every`` s."""
    loop = asyncio.get_running_loop()
    next_full = loop.time() + collect_every
    try:
        while True:
            await asyncio.sleep(freeze_every)
            if loop.time() >= next_full:
                next_full = loop.time() + collect_every
                gc.unfreeze()
                started = loop.time()
                found = gc.collect()
                log.info(
                    "full garbage collection: %d objects in %.2f s", found, loop.time() - started
                )
            else:
                # What died since the last freeze first (the frozen objects are not walked):
                # frozen, it would wait for the full pass (measured: 1.5 KiB per idle connection
                # at 10,000 nodes).
                gc.collect(2)
            gc.freeze()
    finally:
        gc.unfreeze()

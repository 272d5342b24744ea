"""Admission of new TLS handshakes: a bounded number in progress per source address.

A TLS handshake costs the server a few milliseconds of CPU (key exchange and signature) before it
knows whether the client has a certificate at all. A scan, or a revoked node's retry loop, from
one address could otherwise keep any number of them in progress, and every real node connecting
meanwhile waits behind them in the event loop. Here each source address has at most
``per_source`` handshakes in progress; the next ones from it wait their turn (within
``broker.connect_timeout``, which covers the wait and the handshake), so a flood from one address
gets a bounded share of the loop and nodes from other addresses keep connecting. A source with
more than ``MAX_WAITING`` x ``per_source`` connections waiting is refused at once.

Off by default (``per_source`` 0): a slot is held from the accept, so silent connections from an
address (a slow-loris) hold its slots until the connect timeout, and a real node behind the same
address (a NAT, the fault suite's loopback) waits with them; and a connection cut while it
waits still has its ClientHello unread, so the client sees a reset, not a close (the fault
suite's slow-loris test fails on that with the limit on). Turn it on where the nodes do not
share their addresses with what attacks them (bench/handshake_flood.py measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["MAX_WAITING", "HandshakeGate"]

MAX_WAITING = 16


class HandshakeGate:
    """Counts handshakes in progress per source; ``enter`` waits for a slot, ``leave`` frees it."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._active: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def in_progress(self, source: str) -> int:
        return self._active.get(source, 0)

    def full(self, source: str) -> bool:
        """Whether a new connection from ``source`` should be refused rather than wait."""
        if not self.per_source:
            return False
        waiting = self._waiting.get(source)
        return waiting is not None and len(waiting) >= MAX_WAITING * self.per_source

    async def enter(self, source: str) -> None:
        """Take a slot for ``source``, waiting for one if its handshakes are at the limit."""
        if not self.per_source:
            return
        active = self._active.get(source, 0)
        if active < self.per_source:
            self._active[source] = active + 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(source, deque()).append(future)
        try:
            await future  # ``leave`` hands its slot over by setting the result
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.leave(source)  # handed a slot in the same turn it was cancelled: pass it on
            else:
                self._forget(source, future)
            raise

    def _forget(self, source: str, future: asyncio.Future[None]) -> None:
        """Drop a cancelled waiter: left in the queue, it counted towards ``full`` for good."""
        waiting = self._waiting.get(source)
        if waiting is None:
            return
        with contextlib.suppress(ValueError):
            waiting.remove(future)
        if not waiting:
            del self._waiting[source]

    def leave(self, source: str) -> None:
        """Free a slot of ``source``: hand it to the next waiting connection, if any."""
        if not self.per_source:
            return
        waiting = self._waiting.get(source)
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._waiting.pop(source, None)
        active = self._active.get(source, 0) - 1
        if active > 0:
            self._active[source] = active
        else:
            self._active.pop(source, None)

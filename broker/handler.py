"""amqtt's per-connection protocol handler, with its gaps closed.

* keepalive is enforced: a client silent for 1.5 x keepalive is dropped and its will published
  (stock ``handle_read_timeout`` does nothing);
* an unacknowledged outgoing QoS 1 message of a persistent session is kept when the connection
  drops, so it is redelivered with DUP set when the session resumes (stock drops it);
* ``stop`` waits a bounded time for the reader task (stock can wait forever and hang shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING

from broker.events import DisconnectReason

__all__ = ["REASON", "HardenedHandler", "close_quietly"]

log = logging.getLogger(__name__)

REASON = "baetyl.disconnect_reason"
STOP_WAIT = 1.0
RECANCEL_INTERVAL = 0.05


async def close_quietly(writer: Any) -> None:
    """Close an amqtt writer; it drains first, which raises if the peer already went away.

    If the close is cancelled (a second ``stop`` cancels the reader task that is closing), the
    transport is aborted: left half-closed in a TLS shutdown, it would outlive the broker.
    """
    try:
        with contextlib.suppress(OSError, asyncio.TimeoutError, RuntimeError):
            await writer.close()
    except asyncio.CancelledError:
        transport = getattr(getattr(writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()
        raise


class HardenedHandler(BrokerProtocolHandler):  # type: ignore[misc] # amqtt is untyped
    _disconnect_waiter: asyncio.Future[Any] | None

    async def stop(self) -> None:
        self._stop_waiters()
        if self._keepalive_task:
            self._keepalive_task.cancel()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            # Python 3.11's wait_for swallows a cancel that lands as its inner read completes
            # (the reader loop then waits for the next packet), so cancel again until it stops.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT
            while not self._reader_stopped.is_set() and loop.time() < deadline:
                task.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reader_stopped.wait(), RECANCEL_INTERVAL)
            if not self._reader_stopped.is_set():
                log.debug(
                    "reader task did not stop within %.1f s; closing the transport", STOP_WAIT
                )
        if self.writer is not None:
            await close_quietly(self.writer)
        if self._disconnect_waiter is not None and not self._disconnect_waiter.done():
            self._disconnect_waiter.set_result(None)
        self._disconnect_waiter = None
        while not self._pending_subscriptions.empty():
            self._pending_subscriptions.get_nowait()
        while not self._pending_unsubscriptions.empty():
            self._pending_unsubscriptions.get_nowait()

    def handle_read_timeout(self) -> None:
        # The reader loop waits session.keep_alive seconds for a packet; the broker sets that to
        # 1.5 x the client's keepalive at CONNECT. Cancelling the reader ends in
        # handle_connection_closed, which publishes the will.
        if self.session is not None:
            self.session.attributes.setdefault(REASON, DisconnectReason.KEEPALIVE_TIMEOUT)
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        try:
            await super()._handle_qos1_message_flow(app_message)
        except (asyncio.CancelledError, TimeoutError):
            session = self.session
            if (
                app_message.direction == OUTGOING
                and session is not None
                and not session.clean_session
            ):
                session.inflight_out[app_message.packet_id] = app_message
            raise

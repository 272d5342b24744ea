"""Publishing a route's messages: the ``Publisher`` seam and ``PahoPublisher`` over a paho client.

``Publisher.publish`` returns once the broker acknowledged the message (QoS 1) or it was written
to the socket (QoS 0), and raises :class:`~edge.errors.PublishFailed` when the connection is lost
before that. The router sends a route's messages through one, many in flight.

``PahoPublisher`` wraps a paho ``Client`` that runs its own network thread (``loop_start``, the
cloud link's or the agent's local client to the node broker). Each publish gets an
``asyncio.Future`` resolved from ``on_publish`` through ``loop.call_soon_threadsafe`` (one wake of
the loop for all the acknowledgements that arrived meanwhile). When the connection drops, every
pending future fails at once and the messages are taken out of paho's queue: the router sends
them again from its cursor once connected, so paho must not send its own copies first (that
would reorder them behind the retransmissions and double the duplicates).

Paho calls ``on_publish`` with its own lock held and may call it before ``publish`` returned the
message's id, so an acknowledgement of an id nobody waits for, arriving while a ``submit`` is
under way, is remembered until that publish registers its id (``submit`` is called from the one
event loop only, so at most one is under way).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.errors import PublishFailed

__all__ = ["DEFAULT_MAX_INFLIGHT", "PahoPublisher", "PublishFailed", "Publisher", "prepare_client"]

# Paho's own window: 0 is unlimited. The router bounds what it has in flight itself; a paho window
# under that makes paho walk its whole queue at every acknowledgement (``_update_inflight``),
# which cost more than half the throughput at 1,000 (bench/route_drain.py).
DEFAULT_MAX_INFLIGHT = 0


def prepare_client(client: mqtt.Client, max_inflight: int = DEFAULT_MAX_INFLIGHT) -> None:
    """Let ``client`` keep ``max_inflight`` QoS 1 publishes in flight (0: no limit of paho's; its
    default, 20, caps a route's throughput at 20 per round trip). Paho accepts it only while the
    client is not connected: call it before ``connect``."""
    client.max_inflight_messages_set(max_inflight)


class Publisher(Protocol):
    """Where a route's messages go: the cloud link, or the node broker."""

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Return once acknowledged (QoS 1) or written (QoS 0); PublishFailed if the connection
        was lost before."""
        ...


class PahoPublisher:
    """:class:`Publisher` over a paho client with its own network thread.

    It takes the client's ``on_publish`` and chains its ``on_disconnect`` (the owner's callback,
    set before this is made, still runs); an owner that sets ``on_disconnect`` later calls
    :meth:`connection_lost` from it. Used from one event loop (the one current when it is made,
    or ``loop``). Make the client with :func:`prepare_client` for many messages in flight.
    """

    def __init__(
        self,
        client: mqtt.Client,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._client = client
        self._loop = loop or asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[None]] = {}
        # Acknowledged while a submit was between paho's publish and its registration (only
        # then: the owner's own publishes on the same client are acknowledged here too).
        self._early: set[int] = set()
        self._submitting = False
        self._acked: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._generation = 0  # one more at every lost connection
        self._closed = False
        client.on_publish = self._on_publish
        previous = client.on_disconnect

        def on_disconnect(*args: Any) -> None:
            self.connection_lost()
            if previous is not None:
                previous(*args)

        client.on_disconnect = on_disconnect

    @property
    def client(self) -> mqtt.Client:
        return self._client

    @property
    def pending(self) -> int:
        """How many publishes wait for their acknowledgement."""
        return len(self._pending)

    def submit(self, topic: str, payload: bytes, qos: int) -> asyncio.Future[None]:
        """Send now; a future done once acknowledged (or failed with PublishFailed). Publishes
        leave in the order they are submitted."""
        future: asyncio.Future[None] = self._loop.create_future()
        if self._closed or not self._client.is_connected():
            future.set_exception(PublishFailed("Not connected; the message will be sent again."))
            return future
        with self._lock:
            generation = self._generation
            self._submitting = True
        try:
            info = self._client.publish(topic, payload, qos)
        except BaseException:
            with self._lock:
                self._submitting = False
                self._early.clear()
            raise
        with self._lock:
            self._submitting = False
            lost = generation != self._generation
            if not lost and info.rc == mqtt.MQTT_ERR_SUCCESS:
                if info.mid in self._early:
                    future.set_result(None)
                else:
                    self._pending[info.mid] = future
                self._early.clear()
                return future
            self._early.clear()
        self._purge([info.mid])
        reason = mqtt.error_string(info.rc) if info.rc != mqtt.MQTT_ERR_SUCCESS else "lost"
        future.set_exception(PublishFailed(f"The connection was lost ({reason}); sent again."))
        return future

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.submit(topic, payload, qos)

    def connection_lost(self) -> None:
        """Fail every pending publish (thread-safe; paho's on_disconnect calls it)."""
        with self._lock:
            self._generation += 1
            lost = self._pending
            self._pending = {}
            self._early.clear()
        if not lost:
            return
        self._purge(list(lost))

        def fail() -> None:
            for future in lost.values():
                if not future.done():
                    future.set_exception(
                        PublishFailed("The connection was lost before the broker acknowledged.")
                    )

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fail)

    def close(self) -> None:
        """Stop publishing through this client: pending publishes fail."""
        self._closed = True
        self.connection_lost()

    # -- paho's thread ---------------------------------------------------------------------------

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
        with self._lock:
            future = self._pending.pop(mid, None)
            if future is None:
                if self._submitting:
                    self._early.add(mid)
                return
            self._acked.append(future)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, []
            self._scheduled = False
        for future in acked:
            if not future.done():
                future.set_result(None)

    def _purge(self, mids: list[int]) -> None:
        """Take these messages out of paho's queue, so it does not send them on reconnect.
        Paho has no public call for it; without the attributes (another paho) it is skipped
        and the only cost is more duplicates."""
        out = getattr(self._client, "_out_messages", None)
        mutex = getattr(self._client, "_out_message_mutex", None)
        if out is None or mutex is None:
            return
        with mutex:
            for mid in mids:
                out.pop(mid, None)

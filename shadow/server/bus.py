"""The bus: all the shadow service needs of MQTT, and its in-process implementation.

The service publishes, subscribes and hears node presence and refused publishes through this
seam only, so it runs the same on the embedded broker (``EmbeddedBus``, in-process, no socket)
and on an external broker cluster (an MQTT client, with the scale-out work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broker import ConnectionEvent, DeniedPublish, EmbeddedBroker, EventKind, Principal, Role

__all__ = ["Bus", "Denied", "EmbeddedBus", "MessageHandler", "Presence"]

MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True, slots=True)
class Presence:
    """A node's connection came up or went down at ``at_ms`` (unix ms)."""

    node_id: str
    online: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class Denied:
    """A node published to ``topic`` and the broker refused it."""

    node_id: str
    topic: str


class Bus(Protocol):
    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 without waiting (the bus queues per recipient)."""
        ...

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> Callable[[], None]:
        """Call ``handler(topic, payload)`` for each message; returns the unsubscribe function.

        The handler is called synchronously and must return quickly.
        """
        ...

    def on_presence(self, listener: Callable[[Presence], None]) -> Callable[[], None]: ...

    def on_denied(self, listener: Callable[[Denied], None]) -> Callable[[], None]: ...

    @property
    def connected(self) -> bool:
        """Whether messages flow now (an external broker can be away for a while)."""
        ...


class EmbeddedBus:
    """The bus on the embedded broker, in process: no socket, no serialisation, no task."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    @property
    def connected(self) -> bool:
        """Always: the broker is this process."""
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self._broker.publish_nowait(topic, payload, qos=1)

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> Callable[[], None]:
        def deliver(topic: str, payload: bytes, _sender: Principal | None) -> None:
            handler(topic, payload)

        return self._broker.subscribe(topic_filter, deliver)

    def on_presence(self, listener: Callable[[Presence], None]) -> Callable[[], None]:
        def forward(event: ConnectionEvent) -> None:
            if event.role == Role.NODE:
                at_ms = int(event.at.timestamp() * 1000)
                listener(Presence(event.principal, event.kind is EventKind.CONNECTED, at_ms))

        return self._broker.add_listener(forward)

    def on_denied(self, listener: Callable[[Denied], None]) -> Callable[[], None]:
        def forward(event: DeniedPublish) -> None:
            if event.role == Role.NODE:
                listener(Denied(event.principal, event.topic))

        return self._broker.add_denied_listener(forward)

"""Connection events: who connected or disconnected, and why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "ConnectionEvent",
    "ConnectionListener",
    "DeniedListener",
    "DeniedPublish",
    "DisconnectReason",
    "EventKind",
    "Listeners",
]

log = logging.getLogger(__name__)


class EventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class DisconnectReason(StrEnum):
    CLIENT_DISCONNECT = "client-disconnect"  # the client sent DISCONNECT
    CONNECTION_LOST = "connection-lost"  # the socket closed without DISCONNECT
    KEEPALIVE_TIMEOUT = "keepalive-timeout"  # silent for 1.5 x keepalive
    SESSION_TAKEN_OVER = "session-taken-over"  # the same client id connected again
    REVOKED = "revoked"  # the certificate was revoked
    EXPIRED = "expired"  # the certificate expired while connected
    PROTOCOL_ERROR = "protocol-error"  # a malformed or oversized packet
    SLOW_CONSUMER = "slow-consumer"  # stopped reading while messages piled up
    SHUTDOWN = "shutdown"  # the broker stopped
    KICKED = "kicked"  # an operator or the cloud asked for it


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """One client connected or disconnected; ``principal`` is its verified identity name."""

    kind: EventKind
    client_id: str
    principal: str
    at: datetime
    reason: DisconnectReason | None = None
    role: str = ""  # the principal's role: "node", "operator", "service" or "local"


@dataclass(frozen=True, slots=True)
class DeniedPublish:
    """A client published to a topic its identity may not use; the message was dropped."""

    client_id: str
    principal: str
    role: str
    topic: str


ConnectionListener = Callable[[ConnectionEvent], None]
DeniedListener = Callable[[DeniedPublish], None]


class Listeners:
    """Synchronous fan-out of connection events; a failing listener is logged, never fatal."""

    def __init__(self) -> None:
        self._listeners: list[ConnectionListener] = []
        self._denied: list[DeniedListener] = []

    def add(self, listener: ConnectionListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: ConnectionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("connection listener %r failed on %s", listener, event.kind)

    def add_denied(self, listener: DeniedListener) -> Callable[[], None]:
        self._denied.append(listener)
        return lambda: self._denied.remove(listener)

    def emit_denied(self, event: DeniedPublish) -> None:
        for listener in list(self._denied):
            try:
                listener(event)
            except Exception:
                log.exception("denied-publish listener %r failed", listener)

"""What the broker counts while it works, and the snapshot it hands to whoever reports it.

The hot paths only add to integers here (``Counters``); everything that needs a walk over the
sessions (connections by role, queue depths) is computed when a snapshot is asked for, which a
metrics scrape does every few seconds, not per message, and reused for a second
(``core.GAUGES_MAX_AGE``) by the snapshots after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from broker.events import DisconnectReason

__all__ = ["BrokerStats", "Counters", "DropReason"]


class DropReason(StrEnum):
    DENIED = "denied"  # a client published where its identity may not (the ACL)
    QUEUE_FULL = "queue-full"  # a full queue dropped its oldest message for a new one
    OFFLINE = "offline"  # for a disconnected client that keeps no queue (clean session, QoS 0)


class Counters:
    """Running totals, incremented in place by the broker's hot paths."""

    __slots__ = ("disconnects", "drops", "received", "sent")

    def __init__(self) -> None:
        self.received = 0  # PUBLISH packets from clients, routed
        self.sent = 0  # copies delivered to (or queued for) subscribers, in-process ones included
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        self.disconnects: dict[DisconnectReason, int] = dict.fromkeys(DisconnectReason, 0)


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of the broker's counters and gauges (``EmbeddedBroker.stats``)."""

    connections: dict[str, int]  # connected clients by role: node, operator, service, local
    open_connections: int  # sockets past the TLS handshake, connected or not yet
    messages_received: int
    messages_sent: int
    drops: dict[str, int]  # by DropReason
    refusals: dict[str, int]  # by RefusalReason
    disconnects: dict[str, int]  # by DisconnectReason
    queued_messages: int  # waiting in the sessions' queues (offline, or behind a full window)
    inflight_messages: int  # QoS 1 and 2 messages sent and not yet acknowledged
    sessions: int  # sessions kept, connected or not

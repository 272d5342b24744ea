"""What one client may cost the broker: its packet size, and the budgets of its topics and
subscriptions.

A reader refuses an MQTT packet larger than the limit before reading its body. ``Budgets`` bound
what a client's subscriptions make the broker store and walk: the subscription index costs, per
filter, its length plus one trie node per level (router.py), so a client's subscriptions cost at
most ``subscriptions x (max_topic_length + max_topic_levels x one node)`` (bench/router_memory.py
measures it), and a topic is matched in at most ``max_topic_levels`` steps of the trie.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from amqtt.adapters import StreamReaderAdapter

from broker.acl import Role

__all__ = ["Budgets", "PacketTooLarge", "SizeLimitedReader"]

# Mosquitto's own limit on topic levels; past it the trie's matching recursion would approach
# Python's recursion limit.
MAX_TOPIC_LEVELS_CEILING = 200


@dataclass(frozen=True, slots=True)
class Budgets:
    """Per-client budgets of topics and subscriptions (``broker.*`` in baetyl.toml).

    A node needs a handful of subscriptions (its downstream topics, PROTOCOL.md); the cloud's own
    service clients (``service:`` certificates) get the larger ``service_max_subscriptions``.
    """

    max_topic_levels: int = 32
    max_topic_length: int = 1024  # bytes of UTF-8, of a topic name or a topic filter
    max_subscriptions: int = 32  # per node, operator or plaintext client
    service_max_subscriptions: int = 10_000

    def subscriptions_for(self, role: Role | None) -> int:
        """How many subscriptions a client of ``role`` may hold."""
        return self.service_max_subscriptions if role is Role.SERVICE else self.max_subscriptions

    def topic_refusal(self, topic: str) -> str | None:
        """Why a topic name or filter is over the budget, or None if it is within."""
        length = len(topic)
        if length > self.max_topic_length or (
            length * 4 > self.max_topic_length and len(topic.encode()) > self.max_topic_length
        ):
            return f"longer than {self.max_topic_length} bytes"
        if topic.count("/") >= self.max_topic_levels:
            return f"more than {self.max_topic_levels} levels"
        return None


class PacketTooLarge(Exception):
    """A packet's Remaining Length exceeds the broker's maximum packet size.

    Deliberately not an amqtt MQTTError: amqtt's reader loop swallows those and keeps reading.
    """


class SizeLimitedReader(StreamReaderAdapter):  # type: ignore[misc] # amqtt is untyped
    """Follows MQTT framing as bytes pass and raises once a header announces too large a body."""

    def __init__(self, reader: asyncio.StreamReader, max_packet_size: int) -> None:
        super().__init__(reader)
        self._max = max_packet_size
        self._state = 0  # 0: expecting a fixed-header byte; 1: in Remaining Length; 2: in the body
        self._length = 0
        self._multiplier = 1
        self._left = 0

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await super().read(n)
        i = 0
        while i < len(data):
            if self._state == 2:
                take = min(self._left, len(data) - i)
                self._left -= take
                i += take
                if self._left == 0:
                    self._state = 0
                continue
            byte = data[i]
            i += 1
            if self._state == 0:
                self._state, self._length, self._multiplier = 1, 0, 1
                continue
            self._length += (byte & 0x7F) * self._multiplier
            self._multiplier *= 128
            if byte & 0x80:
                if self._multiplier > 128**4:
                    raise PacketTooLarge("malformed Remaining Length (more than 4 bytes)")
                continue
            if self._length + 5 > self._max:
                raise PacketTooLarge(
                    f"a packet of {self._length} bytes exceeds the limit of {self._max} bytes"
                )
            self._left = self._length
            self._state = 2 if self._length else 0
        return data

"""A reader that refuses an MQTT packet larger than the limit before reading its body."""

from __future__ import annotations

import asyncio

from amqtt.adapters import StreamReaderAdapter

__all__ = ["PacketTooLarge", "SizeLimitedReader"]


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

"""A minimal MQTT 3.1.1 codec for the load generator: only the packets a node and a service use.

Hand-encoded on purpose: the load generator must stay cheaper than the brokers it measures, so it
does not go through a full client library.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from broker.packets import remaining_length

__all__ = [
    "CONNACK",
    "PUBACK",
    "PUBLISH",
    "SUBACK",
    "PacketReader",
    "connect",
    "packet_id_of",
    "parse_publish",
    "puback",
    "publish",
    "subscribe",
]

CONNACK, PUBLISH, PUBACK, SUBACK = 2, 3, 4, 9


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def connect(client_id: str, *, keepalive: int = 120, clean_session: bool = True) -> bytes:
    """CONNECT with protocol level 4, no username, password or will."""
    flags = 0x02 if clean_session else 0x00
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    return b"\x10" + remaining_length(len(body)) + body


def subscribe(packet_id: int, topic: str, qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter."""
    body = struct.pack("!H", packet_id) + _string(topic) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


def publish(topic: str, payload: bytes, *, qos: int = 1, packet_id: int = 0) -> bytes:
    """PUBLISH (never retained, never DUP)."""
    body = _string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    body += payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


def puback(packet_id: int) -> bytes:
    """PUBACK for a received QoS 1 PUBLISH."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


class PacketReader:
    """Splits a byte stream into (type, flags, body) packets."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """Add received bytes; yield every complete packet."""
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            multiplier, length, i = 1, 0, pos + 1
            while True:
                if i >= end:
                    del buf[:pos]
                    return
                byte = buf[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    break
            if end - i < length:
                break
            header = buf[pos]
            yield header >> 4, header & 0x0F, bytes(buf[i : i + length])
            pos = i + length
        del buf[:pos]


def parse_publish(flags: int, body: bytes) -> tuple[str, int, int, bytes]:
    """(topic, qos, packet id, payload) of a PUBLISH body."""
    (topic_len,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + topic_len].decode()
    qos = (flags >> 1) & 0x03
    pos = 2 + topic_len
    packet_id = 0
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    return topic, qos, packet_id, body[pos:]


def packet_id_of(body: bytes) -> int:
    """The packet id at the start of a PUBACK or SUBACK body."""
    return int(struct.unpack_from("!H", body)[0])

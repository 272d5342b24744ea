"""Encoding of the packets the broker sends on its hot path, straight to bytes.

amqtt builds a packet object and writes it through an async lock for every message; delivering
one message to ten thousand nodes that way costs a task and several objects per node. These
encoders produce the same bytes (MQTT 3.1.1, section 3.3) with no allocation beyond the result.
"""

from __future__ import annotations

__all__ = [
    "encode_puback",
    "encode_publish",
    "encode_suback",
    "encode_unsuback",
    "remaining_length",
]


def remaining_length(length: int) -> bytes:
    """The variable-length Remaining Length field (section 2.2.3)."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_publish(
    topic: bytes,
    payload: bytes,
    qos: int,
    packet_id: int = 0,
    *,
    dup: bool = False,
    retain: bool = False,
) -> bytes:
    """A PUBLISH packet; ``topic`` is already UTF-8 encoded."""
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    variable = len(topic).to_bytes(2, "big") + topic
    if qos:
        variable += packet_id.to_bytes(2, "big")
    return bytes((header,)) + remaining_length(len(variable) + len(payload)) + variable + payload


def encode_puback(packet_id: int) -> bytes:
    """A PUBACK packet for ``packet_id``."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_suback(packet_id: int, return_codes: list[int]) -> bytes:
    """A SUBACK packet: one return code per requested filter (0x80 for a refusal)."""
    return (
        b"\x90" + remaining_length(2 + len(return_codes)) + packet_id.to_bytes(2, "big")
        + bytes(return_codes)
    )  # fmt: skip


def encode_unsuback(packet_id: int) -> bytes:
    """An UNSUBACK packet for ``packet_id``."""
    return b"\xb0\x02" + packet_id.to_bytes(2, "big")

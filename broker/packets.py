"""The packets of the broker's hot path and of SUBSCRIBE/UNSUBSCRIBE, straight to and from bytes.

amqtt builds a packet object and writes it through an async lock for every message; delivering
one message to ten thousand nodes that way costs a task and several objects per node. These
encoders produce the same bytes (MQTT 3.1.1, section 3.3) with no allocation beyond the result.

The decoders of SUBSCRIBE and UNSUBSCRIBE replace amqtt's, which accepted what MQTT 3.1.1 says
must close the connection: any fixed-header flags, no filter at all, a requested QoS of 3, and a
filter that is not UTF-8 (decoded as the text ``"b'\\xff'"`` and subscribed to).
"""

from __future__ import annotations

__all__ = [
    "MalformedPacket",
    "decode_subscribe",
    "decode_unsubscribe",
    "encode_puback",
    "encode_pubcomp",
    "encode_publish",
    "encode_pubrec",
    "encode_pubrel",
    "encode_suback",
    "encode_unsuback",
    "remaining_length",
]


class MalformedPacket(Exception):
    """A packet MQTT 3.1.1 says the server must answer by closing the connection."""


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


def encode_pubrec(packet_id: int) -> bytes:
    """A PUBREC packet: a QoS 2 PUBLISH was received (step one of two)."""
    return b"\x50\x02" + packet_id.to_bytes(2, "big")


def encode_pubrel(packet_id: int) -> bytes:
    """A PUBREL packet; its fixed-header flags are 0010 [MQTT-3.6.1-1]."""
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def encode_pubcomp(packet_id: int) -> bytes:
    """A PUBCOMP packet: the QoS 2 exchange for ``packet_id`` is complete."""
    return b"\x70\x02" + packet_id.to_bytes(2, "big")


def encode_suback(packet_id: int, return_codes: list[int]) -> bytes:
    """A SUBACK packet: one return code per requested filter (0x80 for a refusal)."""
    return (
        b"\x90" + remaining_length(2 + len(return_codes)) + packet_id.to_bytes(2, "big")
        + bytes(return_codes)
    )  # fmt: skip


def encode_unsuback(packet_id: int) -> bytes:
    """An UNSUBACK packet for ``packet_id``."""
    return b"\xb0\x02" + packet_id.to_bytes(2, "big")


def _string(body: bytes, at: int, what: str) -> tuple[str, int]:
    """The UTF-8 string at ``body[at:]`` and the offset after it [MQTT-1.5.3]."""
    if at + 2 > len(body):
        raise MalformedPacket(f"{what} is cut short")
    end = at + 2 + int.from_bytes(body[at : at + 2], "big")
    if end > len(body):
        raise MalformedPacket(f"{what} runs past the end of the packet")
    try:
        text = body[at + 2 : end].decode("utf-8")  # refuses surrogates as well [MQTT-1.5.3-1]
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket(f"{what} contains U+0000")  # [MQTT-1.5.3-2]
    return text, end


def _packet_id(body: bytes, what: str) -> int:
    if len(body) < 2:
        raise MalformedPacket(f"{what} without a packet identifier")
    packet_id = int.from_bytes(body[:2], "big")
    if packet_id == 0:
        raise MalformedPacket(f"{what} with packet identifier 0")  # [MQTT-2.3.1-1]
    return packet_id


def decode_subscribe(
    flags: int, body: bytes, max_filters: int
) -> tuple[int, list[tuple[str, int]]]:
    """Packet id and (filter, requested QoS) pairs of a SUBSCRIBE body.

    Raises MalformedPacket for what closes the connection: fixed-header flags other than 0010
    [MQTT-3.8.1-1], no filter [MQTT-3.8.3-3], a QoS byte other than 0, 1 or 2 [MQTT-3.8.3-4], a
    filter that is not UTF-8 or holds U+0000 [MQTT-1.5.3-1/-2], and more than ``max_filters``
    filters (more than the client may ever hold: the rest of the packet is not even read).
    """
    if flags != 0x02:
        raise MalformedPacket(f"SUBSCRIBE with fixed-header flags {flags:04b}, not 0010")
    packet_id = _packet_id(body, "SUBSCRIBE")
    topics: list[tuple[str, int]] = []
    at = 2
    while at < len(body):
        if len(topics) >= max_filters:
            raise MalformedPacket(
                f"SUBSCRIBE with more than {max_filters} filters, more than the client may hold"
            )
        topic_filter, at = _string(body, at, "a SUBSCRIBE filter")
        if at >= len(body):
            raise MalformedPacket("a SUBSCRIBE filter without its QoS byte")
        qos = body[at]
        if qos > 2:
            raise MalformedPacket(f"SUBSCRIBE requesting QoS byte {qos:#04x}")
        topics.append((topic_filter, qos))
        at += 1
    if not topics:
        raise MalformedPacket("SUBSCRIBE without a filter")
    return packet_id, topics


def decode_unsubscribe(flags: int, body: bytes, max_filters: int) -> tuple[int, list[str]]:
    """Packet id and filters of an UNSUBSCRIBE body; the same checks as ``decode_subscribe``
    [MQTT-3.10.1-1, 3.10.3-2]."""
    if flags != 0x02:
        raise MalformedPacket(f"UNSUBSCRIBE with fixed-header flags {flags:04b}, not 0010")
    packet_id = _packet_id(body, "UNSUBSCRIBE")
    filters: list[str] = []
    at = 2
    while at < len(body):
        if len(filters) >= max_filters:
            raise MalformedPacket(
                f"UNSUBSCRIBE with more than {max_filters} filters, more than the client may hold"
            )
        topic_filter, at = _string(body, at, "an UNSUBSCRIBE filter")
        filters.append(topic_filter)
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE without a filter")
    return packet_id, filters

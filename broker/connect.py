"""The CONNECT packet read whole, and the protocol versions the embedded broker refuses.

The embedded broker speaks MQTT 3.1.1 only (protocol name ``MQTT``, level 4). amqtt parses a
CONNECT field by field straight from the socket and checks the version only afterwards, so an
MQTT 5 CONNECT (properties after the keepalive) sent it reading a client id out of the wrong
bytes and waiting for more until the CONNECT timeout: the client got no CONNACK and the log an
empty reason. Here the CONNECT is read whole (its Remaining Length says how much), its
protocol name and level are checked first, and only a 3.1.1 CONNECT is handed to amqtt's parser.

What a client that asks for another version gets:

==========================  ==========================================================
``MQTT`` level 5 (MQTT 5)   CONNACK 0x01 (unacceptable protocol version), then closed
``MQIsdp`` level 3 (3.1)    CONNACK 0x01, which MQTT 3.1 defines with the same meaning
``MQTT`` other levels       CONNACK 0x01 [MQTT-3.1.2-2]
any other protocol name     closed without a CONNACK: it is not MQTT [MQTT-3.1.2-1]
==========================  ==========================================================

A 3.1.1 CONNACK is what MQTT 5 clients expect from a 3.1.1-only server (libmosquitto and paho
report "unacceptable protocol version"). Each refusal raises ``RefusedConnect``, which the broker
counts by its reason (``protocol-version``, ``malformed-connect``) and logs at a bounded rate
(``broker.refusals``). A Remaining Length over ``broker.max_packet_size`` is refused before its
body is read, on every listener (``PacketTooLarge``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from amqtt.codecs_amqtt import read_or_raise
from amqtt.errors import MQTTError

from broker.limits import PacketTooLarge
from broker.refusals import RefusalReason

__all__ = [
    "CONNACK_UNACCEPTABLE_VERSION",
    "ProtocolRefusal",
    "RefusedConnect",
    "protocol_refusal",
    "read_packet",
]

MQTT_311: Final = ("MQTT", 4)
# CONNACK: no session present, return code 0x01 (unacceptable protocol version).
CONNACK_UNACCEPTABLE_VERSION: Final = b"\x20\x02\x00\x01"
_VERSIONS: Final = {("MQTT", 5): "MQTT 5", ("MQIsdp", 3): "MQTT 3.1", ("MQTT", 3): "MQTT 3.1"}
_ADVICE: Final = (
    "the embedded broker speaks MQTT 3.1.1 only; connect with MQTT 3.1.1 (mosquitto_pub -V 311, "
    "paho's MQTTv311), or run the cloud on an external MQTT 5 broker (bus.mode=external)"
)


@dataclass(frozen=True, slots=True)
class ProtocolRefusal:
    """Why a CONNECT is refused, and whether the client gets CONNACK 0x01 before the close."""

    reason: str
    answer: bool


class RefusedConnect(MQTTError):  # type: ignore[misc] # amqtt is untyped
    """A first packet refused before amqtt parses it, with the reason it counts as."""

    def __init__(self, message: str, reason: RefusalReason) -> None:
        super().__init__(message)
        self.reason = reason


async def read_packet(reader: Any, max_size: int) -> bytes:
    """One whole MQTT control packet (fixed header and body) from an amqtt reader adapter.

    Raises amqtt's ``NoDataError`` if the connection ends first, ``MQTTError`` for a Remaining
    Length of more than four bytes and ``PacketTooLarge`` for a packet over ``max_size`` bytes,
    before reading its body: a WebSocket reader buffers whatever a client sends, up to the
    Remaining Length's 256 MB.
    """
    header = bytearray(await read_or_raise(reader, 1))
    length, shift = 0, 0
    while True:
        byte = (await read_or_raise(reader, 1))[0]
        header.append(byte)
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if shift >= 28:
            raise MQTTError("malformed Remaining Length in CONNECT (more than 4 bytes)")
    if length + 5 > max_size:  # the same bound as the TCP reader's (broker.limits)
        raise PacketTooLarge(f"a packet of {length} bytes exceeds the limit of {max_size} bytes")
    body = await read_or_raise(reader, length) if length else b""
    return bytes(header) + body


def protocol_refusal(packet: bytes) -> ProtocolRefusal | None:
    """None for an MQTT 3.1.1 CONNECT (``packet`` is a whole one); otherwise why it is refused.

    A first packet that is not a CONNECT [MQTT-3.1.0-1], or a CONNECT too short to name its
    protocol and level, is closed without an answer.
    """
    if not packet or packet[0] >> 4 != 1:
        kind = packet[0] >> 4 if packet else None
        return ProtocolRefusal(
            f"the first packet is of type {kind}, not CONNECT; closed without a CONNACK",
            answer=False,
        )
    start = 1
    while start < len(packet) and packet[start] & 0x80:
        start += 1
    body = packet[start + 1 :]
    size = struct.unpack_from("!H", body)[0] if len(body) >= 2 else len(body)
    if len(body) < 2 + size + 1:
        return ProtocolRefusal(
            "the CONNECT is too short to name its protocol and level; closed without a CONNACK",
            answer=False,
        )
    name = body[2 : 2 + size].decode("utf-8", "replace")
    level = body[2 + size]
    if (name, level) == MQTT_311:
        return None
    if name not in ("MQTT", "MQIsdp"):
        return ProtocolRefusal(
            f"the protocol name {name!r} is not MQTT's; closed without a CONNACK", answer=False
        )
    version = _VERSIONS.get((name, level), f"protocol {name!r} level {level}")
    return ProtocolRefusal(
        f"{version} (protocol {name!r} level {level}) is not supported, answered CONNACK 0x01 "
        f"(unacceptable protocol version): {_ADVICE}",
        answer=True,
    )

"""Just enough MQTT 3.1.1 by hand, over TLS, to do what paho will not.

paho acknowledges every QoS 1 message and pings on its own; these tests need a client that
skips a PUBACK or goes silent after CONNECT.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from tests.broker.helpers import HOST, WAIT, Creds

# -- raw MQTT ------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 14
PUBREC, PUBREL, PUBCOMP, UNSUBSCRIBE, UNSUBACK, PINGRESP = 5, 6, 7, 10, 11, 13


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def packet(kind: int, flags: int, body: bytes) -> bytes:
    """One MQTT control packet."""
    return bytes([kind << 4 | flags]) + _remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    clean_session: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int] | None = None,
) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | qos << 3
        payload += _string(topic) + _string(message)
    return packet(
        CONNECT, 0, _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    )


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return packet(SUBSCRIBE, 2, struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos]))


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, *, dup: bool = False
) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1
    variable = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return packet(PUBLISH, flags, variable + payload)


def ack_packet(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0010) or PUBCOMP for ``packet_id``."""
    return packet(kind, 2 if kind == PUBREL else 0, struct.pack("!H", packet_id))


def string(value: str | bytes) -> bytes:
    """An MQTT UTF-8 string: two bytes of length, then the bytes (not checked)."""
    return _string(value)


@dataclass(frozen=True, slots=True)
class Packet:
    """A received control packet: type, fixed-header flags and body."""

    kind: int
    flags: int
    body: bytes

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    def publish(self) -> tuple[str, int | None, bytes]:
        """Topic, packet id (None at QoS 0) and payload of a PUBLISH."""
        (length,) = struct.unpack_from("!H", self.body)
        topic = self.body[2 : 2 + length].decode()
        rest = self.body[2 + length :]
        if self.qos:
            return topic, struct.unpack_from("!H", rest)[0], rest[2:]
        return topic, None, rest


class RawClient:
    """MQTT 3.1.1 by hand over a TLS socket; a context manager that closes the socket."""

    def __init__(self, port: int, ca: Path, creds: Creds, *, plain: bool = False) -> None:
        """TLS with ``creds``, or with ``plain=True`` the loopback listener (no certificate)."""
        raw = socket.create_connection((HOST, port), timeout=WAIT)
        self.sock: socket.socket = raw
        if not plain:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=ca)
            context.load_cert_chain(creds.cert, creds.key)
            try:
                self.sock = context.wrap_socket(raw, server_hostname=HOST)
            except BaseException:
                raw.close()
                raise
        self._buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def read(self, timeout: float = WAIT) -> Packet:
        """The next control packet; TimeoutError or ConnectionError otherwise."""
        deadline = time.monotonic() + timeout
        first = self._read(1, deadline)[0]
        length, multiplier = 0, 1
        while True:
            byte = self._read(1, deadline)[0]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        return Packet(first >> 4, first & 0x0F, self._read(length, deadline))

    def expect(self, kind: int, timeout: float = WAIT) -> Packet:
        found = self.read(timeout)
        assert found.kind == kind, f"expected packet type {kind}, got {found}"
        return found

    def closed_within(self, timeout: float) -> bool:
        """Whether the broker closes the connection within `timeout` (packets are skipped)."""
        try:
            while True:
                self.read(timeout)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            return True

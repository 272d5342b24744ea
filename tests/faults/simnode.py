"""A simulated node speaking the real protocol (PROTOCOL.md) over mTLS with its own certificate.

It does what the edge agent does, and keeps the books a fault test needs:

* one persistent session (clean session 0, client id = node id); after every connect it
  subscribes to its answer topics and publishes ``desire/get`` with a token;
* a ``desire`` is applied only above the version it has (``DesiredFollower``, as the agent);
  applying one queues a report of the version applied;
* reports carry an increasing ``seq`` and a ``clientToken``; one is in flight, later patches
  wait merged into one (latest wins); a report not answered when the connection drops, or refused
  with 429/5xx (after a back-off), is sent again, like ``edge/reports.py`` does;
* reconnects follow the agent's policy (:func:`agent_reconnect_delay`).

A request that gets no answer within ``ANSWER_TIMEOUT`` while its connection stays up is
counted as overdue (a lost message unless its answer turns up later) and sent again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from shadow import DesiredFollower, JSONObject, RequestError, parse_desire
from tests.broker.rawmqtt import CONNACK, PUBACK, PUBLISH, SUBACK, Packet, connect_packet, packet

__all__ = [
    "ANSWER_TIMEOUT",
    "NodeBook",
    "SimNode",
    "Target",
    "agent_first_delay",
    "agent_reconnect_delay",
    "full_jitter_delay",
]

ANSWER_TIMEOUT = 30.0  # the agent's answer_timeout (edge/reports.py)
CONNECT_TIMEOUT = 10.0  # TCP + TLS + CONNACK; the broker's own connect_timeout is 10 s
KEEPALIVE = 120  # seconds; the fleet's housekeeping pings every KEEPALIVE / 3
SUBSCRIBE = ("desire", "desire/rejected", "delta", "report/accepted", "report/rejected")
_PINGREQ = b"\xc0\x00"
_PINGRESP = 13


# -- the agent's reconnect policy --------------------------------------------------------------


def agent_first_delay(first: float, rng: random.Random) -> int:
    """The per-client first reconnect delay of ``edge/link.py``: round(first * U[1, 2)), >= 1.

    The agent computes it once per MQTT client and hands it to paho as ``min_delay``.
    """
    return max(1, round(first * (1 + rng.random())))


def agent_reconnect_delay(previous: float | None, first: int, largest: float) -> float:
    """paho's next reconnect wait after a failed or lost connection (``Client._reconnect_wait``).

    ``first`` after a successful session (``previous`` is None: paho resets it on CONNACK 0),
    then doubled after each failed attempt, at most ``largest`` (``int(largest)``, at least 1).
    """
    if previous is None:
        return float(first)
    return float(min(previous * 2, max(1, int(largest))))


def full_jitter_delay(failures: int, rng: random.Random, largest: float = 60.0) -> float:
    """Not the agent's policy: a comparison for the storm figures ("full jitter").

    Uniform over [0, min(largest, 2 ** (failures + 1))) s: retries of a fleet dropped at once
    spread out instead of coming back in lockstep waves.
    """
    return rng.uniform(0.0, min(largest, 2.0 ** (failures + 1)))


# -- the wire ----------------------------------------------------------------------------------


def _subscribe(packet_id: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", packet_id)
    for name in filters:
        data = name.encode()
        body += struct.pack("!H", len(data)) + data + b"\x01"
    return packet(8, 2, body)


def _publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    name = topic.encode()
    return packet(PUBLISH, 2, struct.pack("!H", len(name)) + name + struct.pack("!H", packet_id)
                  + payload)  # fmt: skip


def _take(buffer: bytearray) -> Packet | None:
    """Take the first complete packet off the front of ``buffer``, if there is one."""
    end = len(buffer)
    length, multiplier, i = 0, 1, 1
    while True:
        if i >= end:
            return None
        byte = buffer[i]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        i += 1
        if not byte & 0x80:
            break
    if end - i < length:
        return None
    taken = Packet(buffer[0] >> 4, buffer[0] & 0x0F, bytes(buffer[i : i + length]))
    del buffer[: i + length]
    return taken


# -- the node ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """Where the broker is: updated when the cloud restarts elsewhere."""

    host: str
    port: int


@dataclass(slots=True)
class NodeBook:
    """What one node counted."""

    connects: int = 0
    connect_failures: int = 0
    sessions_lost: int = 0
    gets_sent: int = 0
    gets_answered: int = 0
    desires_applied: int = 0
    desires_ignored: int = 0  # at or below the version held: redelivery or a get crossing a push
    reports_sent: int = 0
    accepted: int = 0
    rejected: collections.Counter[int] = field(default_factory=collections.Counter)
    # Tokens of requests left unanswered ANSWER_TIMEOUT on a live connection.
    overdue: set[str] = field(default_factory=set)
    late_answers: int = 0  # answers that came after their request was counted overdue
    unknown_answers: int = 0  # answers to a token this node did not send (or already settled)
    malformed: int = 0  # messages from the cloud that do not parse


@dataclass(slots=True)
class _Request:
    token: str
    sent_at: float
    patch: JSONObject | None = None  # a report's patch; None for a desire/get
    seq: int = 0


class SimNode:
    """One node; :meth:`run` keeps it connected until the fleet stops (see the module doc)."""

    def __init__(
        self, node_id: str, context: ssl.SSLContext, rng: random.Random, reconnect: str = "agent"
    ) -> None:
        self.node_id = node_id
        self.reconnect = reconnect  # "agent" (agent_reconnect_delay) or "full-jitter"
        self.context = context
        self.rng = rng
        self.prefix = f"$baetyl/node/{node_id}/"
        self.first_delay = agent_first_delay(1.0, rng)
        self.book = NodeBook()
        self.follower = DesiredFollower()
        self.desired: JSONObject = {}
        self.reported: JSONObject = {}  # every patch put, merged: what the node says it is
        self.seq = 0
        self.accepted_seq = 0  # the highest seq the cloud answered accepted
        self.pending: JSONObject | None = None
        self.in_flight: _Request | None = None
        self.get: _Request | None = None
        self.retry_at = 0.0
        self.refusals = 0
        self.writer: asyncio.StreamWriter | None = None
        self.online = False
        self.connected_at = 0.0
        self.resynced_at = 0.0  # monotonic time of the last desire/get answered
        self.pinged_at = 0.0
        self.answered = asyncio.Event()  # set at every report accepted (for latency probes)
        self.ping_sent: float | None = None  # a PINGREQ of ping() waiting for its PINGRESP
        self.ping_rtts: list[float] = []
        self._tokens = 0
        self._packet_id = 0

    # -- what the fleet and the tests call -------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing waits to be reported, nothing is in flight, and the last get was answered."""
        return self.online and self.pending is None and self.in_flight is None and self.get is None

    def put(self, fields: JSONObject) -> None:
        """Queue a report patch (with the next seq), merged into the one waiting."""
        self.seq += 1
        patch = {**fields, "seq": self.seq}
        self.reported.update(patch)
        self.pending = {**(self.pending or {}), **patch}
        self._pump(time.monotonic())

    def drop(self) -> None:
        """Cut the connection as a network failure would (the broker sees it reset)."""
        if self.writer is not None:
            self.writer.transport.abort()

    def ping(self) -> None:
        """Send a PINGREQ now; its round trip goes to ``ping_rtts`` (the broker's own latency)."""
        if self.writer is not None and self.ping_sent is None:
            self.ping_sent = self.pinged_at = time.monotonic()
            self.writer.write(_PINGREQ)

    def tick(self, now: float) -> None:
        """Housekeeping: overdue answers, back-off expiry, keepalive pings."""
        if not self.online:
            return
        flight = self.in_flight
        if flight is not None and now - flight.sent_at > ANSWER_TIMEOUT:
            self.book.overdue.add(flight.token)
            self.in_flight = None
            self._requeue(flight)
        if self.get is not None and now - self.get.sent_at > ANSWER_TIMEOUT:
            self.book.overdue.add(self.get.token)
            self._send_get(now)
        if now - self.pinged_at > KEEPALIVE / 3 and self.writer is not None:
            self.pinged_at = now
            self.writer.write(_PINGREQ)
        self._pump(now)

    async def run(self, target: Target, stop: asyncio.Event, first: asyncio.Semaphore) -> None:
        """Connect, and reconnect with the agent's policy, until ``stop`` is set."""
        delay: float | None = None
        failures = 0  # failed attempts since the last session
        gate: asyncio.Semaphore | None = first  # the fleet's first connects are paced
        while not stop.is_set():
            if gate is not None:
                async with gate:
                    established = await self._session_start(target)
            else:
                established = await self._session_start(target)
            if established is not None:
                gate, delay, failures = None, None, 0  # paho resets its delay on CONNACK 0
                await self._session(*established)
            else:
                self.book.connect_failures += 1
                failures += 1
            if stop.is_set():
                break
            if self.reconnect == "agent":
                delay = agent_reconnect_delay(delay, self.first_delay, 60.0)
            else:
                delay = full_jitter_delay(failures, self.rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    # -- the session ------------------------------------------------------------------------------

    async def _session_start(
        self, target: Target
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytearray] | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, ssl=self.context, server_hostname="localhost"
                )
                writer.write(connect_packet(self.node_id, clean_session=False,
                                            keepalive=KEEPALIVE))  # fmt: skip
                buffer = bytearray()
                while (head := _take(buffer)) is None:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("closed before CONNACK")
                    buffer += data
            if head.kind != CONNACK or len(head.body) < 2 or head.body[1] != 0:
                raise ConnectionError(f"refused: {head}")
            return reader, writer, buffer  # what followed the CONNACK: queued pushes
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            if writer is not None:
                writer.transport.abort()
            return None

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buffer: bytearray
    ) -> None:
        now = time.monotonic()
        self.writer, self.online, self.connected_at, self.pinged_at = writer, True, now, now
        self.book.connects += 1
        writer.write(_subscribe(self._next_id(), [self.prefix + name for name in SUBSCRIBE]))
        self._send_get(now)
        self._pump(now)
        try:
            while True:
                while (received := _take(buffer)) is not None:
                    self._on_packet(received)
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
            self._lost()

    def _lost(self) -> None:
        self.online, self.writer, self.ping_sent = False, None, None
        self.book.sessions_lost += 1
        self.get = None  # asked again after the next connect
        flight, self.in_flight = self.in_flight, None
        if flight is not None:
            self._requeue(flight)

    def _on_packet(self, received: Packet) -> None:
        if received.kind == PUBLISH:
            topic, packet_id, payload = received.publish()
            if packet_id is not None and self.writer is not None:
                self.writer.write(packet(PUBACK, 0, struct.pack("!H", packet_id)))
            self._on_message(topic[len(self.prefix) :], payload)
        elif received.kind == _PINGRESP and self.ping_sent is not None:
            self.ping_rtts.append(time.monotonic() - self.ping_sent)
            self.ping_sent = None
        elif received.kind == SUBACK and 0x80 in received.body[2:]:
            raise ConnectionError(f"{self.node_id}: a subscription was refused")

    def _on_message(self, channel: str, payload: bytes) -> None:
        try:
            self._dispatch(channel, json.loads(payload))
        except (ValueError, KeyError, TypeError, RequestError):
            self.book.malformed += 1

    def _dispatch(self, channel: str, body: dict[str, Any]) -> None:
        now = time.monotonic()
        token = body.get("clientToken")
        if channel == "desire":
            if token is not None:
                self._settle_get(token, now)
            message = parse_desire(body)
            if self.follower.offer(message):
                self.desired = message.desired
                self.book.desires_applied += 1
                self.put({"applied": message.version})
            else:
                self.book.desires_ignored += 1
        elif channel == "report/accepted":
            flight = self.in_flight
            if flight is not None and flight.token == token:
                self.in_flight = None
                self.refusals = 0
                self.book.accepted += 1
                self.accepted_seq = max(self.accepted_seq, flight.seq)
                self.answered.set()
                self._pump(now)
            else:
                self._unknown(token)
        elif channel in ("report/rejected", "desire/rejected"):
            code = int(body["code"])
            self.book.rejected[code] += 1
            if channel == "desire/rejected":
                if self.get is not None and self.get.token == token:
                    self.get = None
                    self._send_get(now)  # the agent asks again at its next connect; we retry
                return
            flight = self.in_flight
            if flight is None or flight.token != token:
                self._unknown(token)
                return
            self.in_flight = None
            if code == 429 or code >= 500:
                self.refusals += 1
                delay = min(60.0, 2 ** min(self.refusals - 1, 6))
                self.retry_at = now + delay * (0.5 + 0.5 * self.rng.random())
                self._requeue(flight)
            # Anything else is refused for good: the test fails on book.rejected.

    def _settle_get(self, token: str, now: float) -> None:
        if self.get is not None and self.get.token == token:
            self.get = None
            self.book.gets_answered += 1
            self.resynced_at = now
        else:
            self._unknown(token)

    def _unknown(self, token: object) -> None:
        if isinstance(token, str) and token in self.book.overdue:
            self.book.overdue.discard(token)
            self.book.late_answers += 1
        else:
            self.book.unknown_answers += 1

    def _send_get(self, now: float) -> None:
        if self.writer is None:
            return
        self.get = _Request(self._token("g"), now)
        self.book.gets_sent += 1
        body = json.dumps({"clientToken": self.get.token}).encode()
        self.writer.write(_publish(self.prefix + "desire/get", body, self._next_id()))

    def _pump(self, now: float) -> None:
        """Send the waiting report if nothing is in flight and no back-off runs."""
        if self.writer is None or self.in_flight is not None or self.pending is None:
            return
        if now < self.retry_at:
            return
        patch, self.pending = self.pending, None
        self.in_flight = _Request(self._token("r"), now, patch, int(patch["seq"]))
        self.book.reports_sent += 1
        body = json.dumps({"clientToken": self.in_flight.token, "reported": patch}).encode()
        self.writer.write(_publish(self.prefix + "report", body, self._next_id()))

    def _requeue(self, flight: _Request) -> None:
        assert flight.patch is not None
        self.pending = {**flight.patch, **(self.pending or {})}

    def _token(self, kind: str) -> str:
        self._tokens += 1
        return f"{kind}-{self._tokens}"

    def _next_id(self) -> int:
        self._packet_id = self._packet_id % 65535 + 1
        return self._packet_id

"""amqtt's per-connection protocol handler, with a fast path and its gaps closed.

Every packet a connected client may send — PUBLISH at any QoS, PUBACK, PUBREC, PUBREL, PUBCOMP,
PINGREQ, SUBSCRIBE, UNSUBSCRIBE, DISCONNECT — is read, checked and answered inline in the reader
loop: one ``readexactly`` per packet, no task, no packet object, no lock. Outgoing PUBLISH packets
are encoded straight to bytes and written to the transport.

The QoS 1 and QoS 2 flows are ours (amqtt's QoS 2 flow ran a task per message, gave up after 5 s
and forgot the message, so nothing was resent after a reconnect):

* outgoing: a QoS 1 or 2 message waits in the session's in-flight table (``inflight_out``) until
  its PUBACK, or its PUBREC and then PUBCOMP (the PUBREC marks it; a PUBREL answers). When a
  persistent session resumes, unacknowledged messages are resent with DUP set, and a PUBREL is
  resent for each that got its PUBREC [MQTT-4.4.0-1];
* incoming QoS 2: the message is routed when its PUBLISH arrives, its packet id is kept in the
  session's ``inflight_in`` until the PUBREL (across a reconnect of a persistent session), and a
  PUBLISH resent with that id is answered with PUBREC without being routed again: exactly once
  to the subscribers (MQTT 3.1.1 figure 4.3, "Method B").

Packets MQTT 3.1.1 says close the connection do (``ProtocolViolation``): a malformed SUBSCRIBE or
UNSUBSCRIBE (``packets.decode_subscribe``), wrong fixed-header flags on PUBREL [MQTT-3.6.1-1],
an acknowledgement that is not two bytes, a PUBLISH at QoS 3, a packet type a client never sends.

Stock gaps closed as well:

* keepalive is enforced: a client silent for 1.5 x keepalive is dropped and its will published;
* a consumer that stops reading is disconnected once its unsent bytes or unacknowledged messages
  pass a bound, instead of growing the broker's memory without limit;
* ``stop`` waits a bounded time for the reader task (stock can wait forever and hang shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import BufferReader, StreamReaderAdapter, StreamWriterAdapter
from amqtt.errors import NoDataError, ProtocolHandlerError
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.packet import (
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OutgoingApplicationMessage

from broker.acl import valid_topic
from broker.connect import (
    CONNACK_UNACCEPTABLE_VERSION,
    RefusedConnect,
    protocol_refusal,
    read_packet,
)
from broker.events import DisconnectReason
from broker.packets import (
    MalformedPacket,
    decode_subscribe,
    decode_unsubscribe,
    encode_puback,
    encode_pubcomp,
    encode_publish,
    encode_pubrec,
    encode_pubrel,
)
from broker.queues import LazyQueue
from broker.refusals import RefusalReason

__all__ = ["REASON", "HardenedHandler", "PublishCallback", "close_quietly", "enqueue"]

log = logging.getLogger(__name__)

REASON = "baetyl.disconnect_reason"
DROPPING = "baetyl.dropping"
STOP_WAIT = 1.0
RECANCEL_INTERVAL = 0.05
# A consumer this far behind is cut off rather than buffered for without limit.
MAX_UNSENT_BYTES = 8 * 1024 * 1024
# QoS 1 messages sent and not yet acknowledged, per client; more wait in the session's queue
# (also its offline queue), which keeps at most QUEUE_LIMIT messages and drops the oldest
# (desired state is latest-wins: the newest matter).
MAX_INFLIGHT = 1000
QUEUE_LIMIT = 10_000
FLOW = "baetyl.flow"  # session attribute: the session's own FlowLimits, when not NODE_FLOW


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """How far one client may fall behind: its QoS 1 window, its queue, its unsent bytes.

    Never below ``NODE_FLOW``'s: the hot path checks the node limits first and looks up the
    session's own only past them.
    """

    max_inflight: int
    queue_limit: int
    max_unsent_bytes: int


NODE_FLOW = FlowLimits(MAX_INFLIGHT, QUEUE_LIMIT, MAX_UNSENT_BYTES)
# A service (the cloud side) subscribes to every node's reports. With a node's window its
# throughput is capped at one window per event-loop iteration, and an iteration over 10,000 busy
# connections takes about a second (measured: 800 reports/s reached the service at 10,000 nodes),
# while its queue dropped reports. A trusted service gets a window as wide as packet ids allow,
# and a queue that holds minutes of a fleet's reports.
SERVICE_FLOW = FlowLimits(
    max_inflight=60_000, queue_limit=1_000_000, max_unsent_bytes=128 * 1024 * 1024
)


def flow_of(session: Any) -> FlowLimits:
    """The flow limits of a session (nodes, operators and local clients share NODE_FLOW)."""
    flow: FlowLimits = session.attributes.get(FLOW, NODE_FLOW)
    return flow


PINGRESP = b"\xd0\x00"
_STOCK_LOG = logging.getLogger("amqtt.mqtt.protocol.handler")

# (session, topic, payload, qos, retain) -> ticket; routes a client's PUBLISH, synchronously.
# The ticket is None here; the node broker's is what its acknowledgement waits for (_acknowledge).
PublishCallback = Callable[[Any, str, bytes, int, bool], object]
# (session, handler, packet id, [(filter, qos)]) -> awaitable; answers SUBSCRIBE/UNSUBSCRIBE.
SubscribeCallback = Callable[[Any, "HardenedHandler", int, list[tuple[str, int]]], Awaitable[None]]
UnsubscribeCallback = Callable[[Any, "HardenedHandler", int, list[str]], Awaitable[None]]
# session -> how many subscriptions its client may hold (and so filters in one SUBSCRIBE).
SubscriptionLimit = Callable[[Any], int]
# Filters in one (UN)SUBSCRIBE when no limit is set: what a 256 KiB packet can carry anyway.
NO_SUBSCRIPTION_LIMIT = 1 << 20


def enqueue(session: Any, topic: str, data: bytes, qos: int, *, retain: bool = False) -> bool:
    """Queue a message for a session (offline, or behind a full window), dropping the oldest.

    Returns whether a message was dropped to make room (counted by the caller).
    """
    queue = session.retained_messages
    limit = flow_of(session).queue_limit
    dropped: bool = queue.qsize() >= limit
    if dropped:
        queue.get_nowait()
        if not session.attributes.get(DROPPING):
            session.attributes[DROPPING] = True
            log.warning("%s: queue full (%d); dropping the oldest", session.client_id, limit)
    elif session.attributes.get(DROPPING):
        session.attributes[DROPPING] = False
    queue.put_nowait(OutgoingApplicationMessage(None, topic, qos, data, retain))
    return dropped


def _next_packet_id(session: Any) -> int:
    """A packet id for an outgoing message, not in use by another one in flight.

    amqtt's ``next_packet_id`` also skips the ids of the client's QoS 2 messages awaiting PUBREL
    (``inflight_in``), another id space [MQTT-2.3.1-4]: a client holding thousands of those
    could exhaust it and make every delivery to it raise. The in-flight window is below 65,535.
    """
    inflight = session.inflight_out
    packet_id: int = session._packet_id
    for _ in range(65535):
        packet_id = packet_id % 65535 + 1
        if packet_id not in inflight:
            session._packet_id = packet_id
            return packet_id
    raise RuntimeError("No free packet id: 65,535 messages in flight (the window prevents it).")


class ProtocolViolation(Exception):
    """The client sent a packet MQTT 3.1.1 says closes the connection."""


async def close_quietly(writer: Any) -> None:
    """Close an amqtt writer; it drains first, which raises if the peer already went away.

    If the close is cancelled (a second ``stop`` cancels the reader task that is closing), the
    transport is aborted: left half-closed in a TLS shutdown, it would outlive the broker.
    """
    try:
        with contextlib.suppress(OSError, asyncio.TimeoutError, RuntimeError):
            await writer.close()
    except asyncio.CancelledError:
        transport = getattr(getattr(writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()
        raise


class HardenedHandler(BrokerProtocolHandler):  # type: ignore[misc] # amqtt is untyped
    _disconnect_waiter: asyncio.Future[Any] | None
    _reader_stopped: asyncio.Event

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._out: list[bytes] = []
        # Tasks of sends that must be awaited (WebSocket): made on the first one, as an
        # empty set costs 216 bytes on each of 10,000 idle connections.
        self._slow_sends: set[asyncio.Future[Any]] | None = None
        self._last_read = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        # Subscriptions are answered inline (_on_subscribe), so these stay empty.
        self._pending_subscriptions: LazyQueue[Any] = LazyQueue()
        self._pending_unsubscriptions: LazyQueue[Any] = LazyQueue()

    on_publish: PublishCallback | None = None
    on_subscribe: SubscribeCallback | None = None
    on_unsubscribe: UnsubscribeCallback | None = None
    subscription_limit: SubscriptionLimit | None = None
    on_queue_drop: Callable[[], None] = staticmethod(lambda: None)  # a full queue dropped one
    max_packet_size: int = 256 * 1024

    # -- CONNECT ------------------------------------------------------------------------------

    @classmethod
    async def init_from_connect(
        cls,
        reader: Any,
        writer: Any,
        plugins_manager: Any,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[HardenedHandler, Any]:
        """amqtt's, after the CONNECT is read whole and any version but 3.1.1 refused (see
        ``broker.connect``): stock parsed an MQTT 5 CONNECT as 3.1.1 and hung until the timeout."""
        host, port = writer.get_peer_info() or ("?", "?")
        packet = await read_packet(reader, cls.max_packet_size)
        refusal = protocol_refusal(packet)
        if refusal is not None:
            if refusal.answer:
                with contextlib.suppress(Exception):  # the client may be gone already
                    writer.write(CONNACK_UNACCEPTABLE_VERSION)
                    await writer.drain()
            await close_quietly(writer)
            # Answered: another MQTT version; closed without an answer: not a CONNECT at all.
            reason = RefusalReason.MALFORMED_CONNECT
            if refusal.answer:
                reason = RefusalReason.PROTOCOL_VERSION
            raise RefusedConnect(f"refused CONNECT from {host}:{port}: {refusal.reason}", reason)
        try:
            handler, session = await super().init_from_connect(
                BufferReader(packet), writer, plugins_manager, loop
            )
        except NoDataError:  # the buffer ran out: the CONNECT is shorter than its fields say
            await close_quietly(writer)
            raise RefusedConnect(
                f"refused CONNECT from {host}:{port}: it is shorter than its fields say; "
                "closed without a CONNACK",
                RefusalReason.MALFORMED_CONNECT,
            ) from None
        return handler, session

    # -- sending ------------------------------------------------------------------------------

    def _transport(self) -> asyncio.WriteTransport | None:
        inner = getattr(self.writer, "_writer", None)
        transport = getattr(inner, "transport", None)
        if transport is None or transport.is_closing():
            return None
        return transport  # type: ignore[no-any-return]

    def send_bytes(self, data: bytes) -> None:
        """Queue ``data`` for the connection; written once per event-loop iteration.

        Everything sent to one client in one iteration (a burst of reports to a service, a
        PUBACK and a PUBLISH) goes out as one TLS write: one record, one system call.
        """
        if not isinstance(self.writer, _TCP_WRITERS):
            if self.writer is not None:
                self._send_slow(data)  # WebSocket: amqtt's writer needs an awaited drain
            return
        self._out.append(data)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        transport = self._transport()
        if transport is None:
            return  # the connection is going; unacknowledged QoS 1 stays for redelivery
        transport.write(data)
        if transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            limit = (
                MAX_UNSENT_BYTES if self.session is None else flow_of(self.session).max_unsent_bytes
            )
            if transport.get_write_buffer_size() > limit:
                self._cut_off(f"more than {limit} bytes unsent")

    def _send_slow(self, data: bytes) -> None:
        writer = self.writer

        async def send() -> None:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(data)
                await writer.drain()

        self._track(send())

    def _track(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a send that must be awaited (WebSocket), keeping a reference until done."""
        task = asyncio.ensure_future(coroutine)
        if self._slow_sends is None:
            self._slow_sends = set()
        self._slow_sends.add(task)
        task.add_done_callback(self._slow_sends.discard)

    def _cut_off(self, why: str) -> None:
        session = self.session
        if session is not None and REASON not in session.attributes:
            session.attributes[REASON] = DisconnectReason.SLOW_CONSUMER
            log.warning("disconnecting %s: %s", session.client_id, why)
        transport = self._transport()
        if transport is not None:
            transport.abort()

    def deliver(self, topic: str, data: bytes, qos: int, *, retain: bool = False) -> None:
        """Send one message to this client at ``qos``, or queue it behind a full window."""
        session = self.session
        if session is None:
            return
        if qos == 0:
            self.send_bytes(encode_publish(topic.encode(), data, 0, retain=retain))
        elif (
            len(session.inflight_out) >= MAX_INFLIGHT
            and len(session.inflight_out) >= flow_of(session).max_inflight
        ) or not session.retained_messages.empty():
            if enqueue(session, topic, data, qos, retain=retain):  # behind the queue: order kept
                self.on_queue_drop()
        else:
            self._send_now(topic, data, qos, retain)

    def drain(self) -> None:
        """Send queued messages while the in-flight window has room."""
        session = self.session
        if session is None:
            return
        queue = session.retained_messages
        window = flow_of(session).max_inflight
        while not queue.empty() and len(session.inflight_out) < window:
            if self._transport() is None and isinstance(self.writer, _TCP_WRITERS):
                return  # the connection is going; the queue waits for the next one
            message = queue.get_nowait()
            self._send_now(message.topic, bytes(message.data), message.qos, message.retain)

    def _send_now(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        session = self.session
        packet_id = _next_packet_id(session)
        session.inflight_out[packet_id] = OutgoingApplicationMessage(
            packet_id, topic, qos, data, retain
        )
        self.send_bytes(encode_publish(topic.encode(), data, qos, packet_id, retain=retain))

    async def _retry_deliveries(self) -> None:
        # [MQTT-4.4.0-1]: resend unacknowledged PUBLISH packets, DUP set, on a resumed session.
        session = self.session
        if session is None:
            return
        for message in list(session.inflight_out.values()):
            if message.pubrec_packet is not None:  # QoS 2, PUBREC received: on to PUBREL
                self.send_bytes(encode_pubrel(message.packet_id))
            else:
                self.send_bytes(
                    encode_publish(
                        message.topic.encode(),
                        bytes(message.data),
                        message.qos,
                        message.packet_id,
                        dup=True,
                        retain=message.retain,
                    )
                )
        # Incoming QoS 2 ids in inflight_in wait for the client to resend its PUBREL.

    # -- receiving ----------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        raw = getattr(self.reader, "_reader", None)
        if not isinstance(self.reader, StreamReaderAdapter) or raw is None:
            await super()._reader_loop()  # WebSocket connections keep amqtt's loop
            return
        session = self.session
        loop = asyncio.get_running_loop()
        keepalive = session.keep_alive if session.keep_alive and session.keep_alive > 0 else 0
        if keepalive:
            # One timer per keepalive period, not a timeout per packet read.
            self._last_read = loop.time()
            self._idle_timer = loop.call_later(keepalive, self._check_idle, keepalive)
        try:
            while True:
                first = await raw.readexactly(1)
                length = await self._read_length(raw)
                if length + 5 > self.max_packet_size:
                    raise ProtocolViolation(
                        f"a packet of {length} bytes exceeds the limit of "
                        f"{self.max_packet_size} bytes"
                    )
                body = await raw.readexactly(length) if length else b""
                self._last_read = loop.time()
                packet_type, flags = first[0] >> 4, first[0] & 0x0F
                if packet_type == PUBLISH:
                    self._on_publish(flags, body)
                elif packet_type in _ACKNOWLEDGEMENTS:
                    self._on_acknowledgement(packet_type, flags, body)
                elif packet_type == PINGREQ:
                    self.send_bytes(PINGRESP)
                elif packet_type == SUBSCRIBE:
                    await self._on_subscribe(flags, body)
                elif packet_type == UNSUBSCRIBE:
                    await self._on_unsubscribe(flags, body)
                elif packet_type == DISCONNECT:
                    await self.handle_disconnect(await self._decode(packet_type, flags, body))
                    break
                elif packet_type in (RESERVED_0, RESERVED_15):
                    raise ProtocolViolation(f"reserved packet type {packet_type}")
                else:  # CONNECT again [MQTT-3.1.0-2], or a packet only a server sends
                    raise ProtocolViolation(f"unexpected packet type {packet_type} from a client")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # stop(), a take-over, or the keepalive timer (which set the reason)
        except ProtocolViolation as exc:
            if session is not None:
                session.attributes.setdefault(REASON, DisconnectReason.PROTOCOL_ERROR)
                log.warning("closing %s: %s", session.client_id, exc)
        except Exception as exc:
            log.warning("closing %s: unexpected %r", getattr(session, "client_id", "?"), exc)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        self._flush()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def _check_idle(self, keepalive: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._last_read + keepalive
        if loop.time() < deadline:
            self._idle_timer = loop.call_at(deadline, self._check_idle, keepalive)
        else:
            self.handle_read_timeout()  # [MQTT-3.1.2-24]: silent for 1.5 x keepalive

    @staticmethod
    async def _read_length(raw: asyncio.StreamReader) -> int:
        value, multiplier = 0, 1
        for _ in range(4):
            byte = (await raw.readexactly(1))[0]
            value += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                return value
            multiplier *= 128
        raise ProtocolViolation("malformed Remaining Length (more than 4 bytes)")

    def _on_publish(self, flags: int, body: bytes) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos == 3:
            raise ProtocolViolation("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
        if len(body) < 2:
            raise ProtocolViolation("PUBLISH without a topic")
        topic_length = int.from_bytes(body[:2], "big")
        end = 2 + topic_length
        if len(body) < end:
            raise ProtocolViolation(
                f"PUBLISH topic length {topic_length} runs past the packet's {len(body)} bytes"
            )
        try:
            topic = body[2:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("PUBLISH topic is not UTF-8") from None
        packet_id = 0
        if qos:
            if len(body) < end + 2:
                raise ProtocolViolation(f"QoS {qos} PUBLISH without a packet id")
            packet_id = int.from_bytes(body[end : end + 2], "big")
            end += 2
        self._accept_publish(topic, body[end:], qos, retain, packet_id)

    def _accept_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int
    ) -> None:
        """Route a client's PUBLISH and acknowledge it; QoS 2 is routed once per packet id."""
        if not valid_topic(topic):
            raise ProtocolViolation(f"PUBLISH to an invalid topic {topic!r}")  # [MQTT-3.3.2-2]
        session = self.session
        if qos == QOS_2:
            held = session.inflight_in
            if packet_id in held:  # resent before its PUBREL: routed already [MQTT-4.3.3-2]
                self.send_bytes(encode_pubrec(packet_id))
                return
            limit = flow_of(session).max_inflight
            if len(held) >= limit:
                raise ProtocolViolation(f"more than {limit} QoS 2 messages awaiting their PUBREL")
            held[packet_id] = None  # only the id is needed: the message is routed now
        ticket = None
        if self.on_publish is not None:
            ticket = self.on_publish(session, topic, payload, qos, retain)
        if qos == QOS_1:
            self._acknowledge(encode_puback(packet_id), ticket)
        elif qos == QOS_2:
            self._acknowledge(encode_pubrec(packet_id), ticket)

    def _acknowledge(self, ack: bytes, ticket: object) -> None:
        """Send a PUBACK or PUBREC; the node broker's handler holds it until its spool commits."""
        self.send_bytes(ack)

    def _on_acknowledgement(self, packet_type: int, flags: int, body: bytes) -> None:
        """PUBACK, PUBREC, PUBREL or PUBCOMP: two bytes of packet id, flags as 3.1.1 fixes them."""
        if len(body) != 2:
            raise ProtocolViolation(f"packet type {packet_type} of {len(body)} bytes, not 2")
        if flags != (0x02 if packet_type == PUBREL else 0):
            raise ProtocolViolation(  # [MQTT-2.2.2-2, MQTT-3.6.1-1]
                f"packet type {packet_type} with fixed-header flags {flags:04b}"
            )
        packet_id = int.from_bytes(body, "big")
        if packet_type == PUBACK:
            self._on_puback(packet_id)
        elif packet_type == PUBREC:
            self._on_pubrec(packet_id)
        elif packet_type == PUBREL:
            self._on_pubrel(packet_id)
        else:
            self._on_pubcomp(packet_id)

    def _subscription_limit(self) -> int:
        if self.subscription_limit is None or self.session is None:
            return NO_SUBSCRIPTION_LIMIT
        return self.subscription_limit(self.session)

    async def _on_subscribe(self, flags: int, body: bytes) -> None:
        try:
            packet_id, topics = decode_subscribe(flags, body, self._subscription_limit())
        except MalformedPacket as exc:
            raise ProtocolViolation(str(exc)) from None
        if self.on_subscribe is not None:
            await self.on_subscribe(self.session, self, packet_id, topics)

    async def _on_unsubscribe(self, flags: int, body: bytes) -> None:
        try:
            packet_id, filters = decode_unsubscribe(flags, body, self._subscription_limit())
        except MalformedPacket as exc:
            raise ProtocolViolation(str(exc)) from None
        if self.on_unsubscribe is not None:
            await self.on_unsubscribe(self.session, self, packet_id, filters)

    # WebSocket connections keep amqtt's reader loop, which decodes each packet and calls these.

    def _abandon(self, why: str) -> None:
        """Close a WebSocket connection whose packet (handled in a task of its own) is invalid."""
        session = self.session
        if session is not None:
            session.attributes.setdefault(REASON, DisconnectReason.PROTOCOL_ERROR)
            log.warning("closing %s: %s", session.client_id, why)
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()

    async def handle_publish(self, publish_packet: Any) -> None:
        packet_id = publish_packet.variable_header.packet_id if publish_packet.qos else 0
        try:
            self._accept_publish(
                str(publish_packet.topic_name),
                bytes(publish_packet.data or b""),
                int(publish_packet.qos or 0),
                bool(publish_packet.retain_flag),
                int(packet_id or 0),
            )
        except ProtocolViolation as exc:
            self._abandon(str(exc))

    async def handle_subscribe(self, subscribe: Any) -> None:
        # amqtt has decoded the packet (a filter that is not UTF-8 becomes the text "b'...'"):
        # the other checks of decode_subscribe are made on what it decoded.
        topics = [(str(f), int(q)) for f, q in subscribe.payload.topics]
        flags = subscribe.fixed_header.flags
        why = None
        if flags != 0x02 or not topics:
            why = "SUBSCRIBE with wrong flags or no filter"
        elif len(topics) > self._subscription_limit():
            why = "SUBSCRIBE with more filters than the client may hold"
        elif any(qos > 2 or "\x00" in f for f, qos in topics):
            why = "SUBSCRIBE requesting QoS 3 or with U+0000 in a filter"
        if why is not None:
            self._abandon(why)
        elif self.on_subscribe is not None:
            await self.on_subscribe(self.session, self, subscribe.variable_header.packet_id, topics)

    async def handle_unsubscribe(self, unsubscribe: Any) -> None:
        filters = [str(f) for f in unsubscribe.payload.topics]
        if unsubscribe.fixed_header.flags != 0x02 or not filters:
            self._abandon("UNSUBSCRIBE with wrong flags or no filter")
        elif self.on_unsubscribe is not None:
            packet_id = unsubscribe.variable_header.packet_id
            await self.on_unsubscribe(self.session, self, packet_id, filters)

    async def handle_pubrec(self, pubrec: Any) -> None:
        self._on_pubrec(pubrec.packet_id)

    async def handle_pubrel(self, pubrel: Any) -> None:
        self._on_pubrel(pubrel.packet_id)

    async def handle_pubcomp(self, pubcomp: Any) -> None:
        self._on_pubcomp(pubcomp.packet_id)

    async def handle_puback(self, puback: Any) -> None:
        self._on_puback(puback.variable_header.packet_id)

    def _on_puback(self, packet_id: int) -> None:
        session = self.session
        if session is None:
            return
        message = session.inflight_out.get(packet_id)
        if message is not None and message.qos == QOS_1:
            del session.inflight_out[packet_id]
            if not session.retained_messages.empty():
                self.drain()

    def _on_pubrec(self, packet_id: int) -> None:
        # The message may be discarded; the id stays in use until PUBCOMP [MQTT-4.3.3-1].
        session = self.session
        message = None if session is None else session.inflight_out.get(packet_id)
        if message is not None and message.qos == QOS_2:
            message.pubrec_packet = True  # marks it: a reconnect resends PUBREL, not PUBLISH
            message.data = b""
            self.send_bytes(encode_pubrel(packet_id))

    def _on_pubrel(self, packet_id: int) -> None:
        # Answered even for an id not held (its PUBCOMP was lost): the client waits for one.
        session = self.session
        if session is not None:
            session.inflight_in.pop(packet_id, None)
        self.send_bytes(encode_pubcomp(packet_id))

    def _on_pubcomp(self, packet_id: int) -> None:
        session = self.session
        message = None if session is None else session.inflight_out.get(packet_id)
        if message is not None and message.qos == QOS_2 and message.pubrec_packet is not None:
            del session.inflight_out[packet_id]
            if not session.retained_messages.empty():
                self.drain()

    @staticmethod
    async def _decode(packet_type: int, flags: int, body: bytes) -> Any:
        header = MQTTFixedHeader(packet_type, flags, len(body))
        return await packet_class(header).from_stream(BufferReader(body), fixed_header=header)

    # -- starting ----------------------------------------------------------------------------

    def _init_session(self, session: Any) -> None:
        # amqtt's, without a LoggerAdapter per connection (its debug lines lose the client id).
        self.session = session
        self.logger = _STOCK_LOG
        keep_alive = session.keep_alive
        self.keepalive_timeout = keep_alive if keep_alive and keep_alive > 0 else None

    async def start(self) -> None:
        """amqtt's start, less what an idle TCP connection paid for and never used: an Event for
        the reader task to say it started (nothing here waits on it), and a write-timeout timer
        whose callback does nothing in a broker (``BrokerProtocolHandler.handle_write_timeout``).
        """
        if not isinstance(self.reader, StreamReaderAdapter) or self.reader._reader is None:
            await super().start()  # WebSocket: amqtt's reader loop, which sets _reader_ready
            return
        if not self._is_attached():
            raise ProtocolHandlerError("Handler is not attached to a stream")
        if self._reader_stopped.is_set():
            self._reader_stopped = asyncio.Event()
        self._reader_task = asyncio.create_task(self._reader_loop())
        await self._retry_deliveries()
        if self._disconnect_waiter is None or self._disconnect_waiter.done():
            self._disconnect_waiter = asyncio.get_running_loop().create_future()  # as amqtt's

    # -- lifecycle -------------------------------------------------------------------------------

    async def stop(self) -> None:
        self._stop_waiters()
        if self._keepalive_task:
            self._keepalive_task.cancel()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            # Python 3.11's wait_for swallows a cancel that lands as its inner read completes
            # (the reader loop then waits for the next packet), so cancel again until it stops.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT
            while not self._reader_stopped.is_set() and loop.time() < deadline:
                task.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reader_stopped.wait(), RECANCEL_INTERVAL)
            if not self._reader_stopped.is_set():
                log.debug(
                    "reader task did not stop within %.1f s; closing the transport", STOP_WAIT
                )
        if self.writer is not None:
            await close_quietly(self.writer)
        if self._disconnect_waiter is not None and not self._disconnect_waiter.done():
            self._disconnect_waiter.set_result(None)
        self._disconnect_waiter = None
        while not self._pending_subscriptions.empty():
            self._pending_subscriptions.get_nowait()
        while not self._pending_unsubscriptions.empty():
            self._pending_unsubscriptions.get_nowait()

    def handle_read_timeout(self) -> None:
        # The broker sets session.keep_alive to 1.5 x the client's keepalive at CONNECT; ending
        # the reader runs handle_connection_closed, which publishes the will.
        if self.session is not None:
            self.session.attributes.setdefault(REASON, DisconnectReason.KEEPALIVE_TIMEOUT)
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()


_TCP_WRITERS = (StreamWriterAdapter,)
_ACKNOWLEDGEMENTS = frozenset({PUBACK, PUBREC, PUBREL, PUBCOMP})

"""amqtt's Broker with the holes that matter to a fleet closed, and a core that scales.

Security (broker/README.md lists amqtt 0.12.1's holes with line numbers), each override naming the
stock behaviour it replaces:

* ``_create_ssl_context``: stock asks for a client certificate but accepts none (CERT_OPTIONAL);
  ours requires one signed by our CA, checks the CRL and reloads without a restart.
* ``_initialize_client_session``: stock keeps a resumed session's old TLS object, so a client could
  resume another node's session, and deletes/takes over the old session before authenticating.
  Ours reads the identity from the live connection at every CONNECT, refuses a client id that is
  not the certificate's (CONNACK 5) before touching any session, checks the will topic, enforces a
  CONNECT timeout and sets the keepalive deadline to 1.5 x keepalive.
* ``_handle_client_session``: stock sends every retained message matching *any* client's filters
  to each new connection, at QoS 0 and without ACL; ours sends retained messages only on SUBSCRIBE.
* client publishes to ``$`` topics: stock drops them and stops reading from that client; ours lets
  the ACL decide.
* delivery QoS: stock uses the subscriber's; ours min(publish, subscription), retained included
  (stock upgraded a retained QoS 0 message to the subscription's QoS), and queued offline
  messages go out without RETAIN.

Budgets against hostile clients, none of which stock has:

* a filter longer than ``broker.max_topic_length`` bytes or deeper than ``broker.max_topic_levels``
  levels, and a subscription past the client's ``broker.max_subscriptions`` (a service's:
  ``broker.service_max_subscriptions``), get SUBACK 0x80: refused by policy, the connection
  stays. A SUBSCRIBE carrying more filters than the client may hold at all closes it (the
  handler stops reading it there), as a malformed SUBSCRIBE does (packets.decode_subscribe);
* a PUBLISH to a topic over the same length or levels is dropped like one the ACL refuses.

Scale, for a fleet of thousands of nodes on one broker:

* subscriptions live in a ``SubscriptionIndex`` (exact topics in a dict, wildcards in a trie, a
  per-client index for removal) instead of a list scanned for every publish and every disconnect;
* ACL is decided once, at SUBSCRIBE; a publish is checked once, against its sender;
* a publish is routed and written to each recipient's transport inline, in the sender's reader
  loop (see ``handler``): no queue, no task per message or per recipient;
* retained messages for an exact filter are one dictionary lookup, not a scan; for a wildcard
  filter whose first three levels are literal (a node's own, ``$baetyl/node/<id>/...``), a scan
  of the retained topics under those levels only, not of the fleet's.

Hostile clients:

* TLS: stock lets asyncio do the handshake before the broker hears of the connection, and a
  failed one vanishes silently, its SSL objects held in reference cycles (the exception's
  traceback and asyncio's waiter) until a full garbage collection, which the server process's
  ``gc.freeze`` policy postpones for minutes: 11.5 KiB per refused handshake over 20,000
  (bench/RESULTS.md). Here the listener accepts plain TCP and ``_tls_connected`` runs the
  handshake itself: a refusal is counted and logged by reason and source (``refusals``), and its
  exception's traceback is cleared, so reference counting frees everything of it at once.
* refusals at CONNECT and over ``max_connections`` are counted and logged the same way.
* admission, when ``broker.handshakes_per_source`` is set: at most that many handshakes in
  progress per source address, the next ones waiting their turn (``admission``), so a flood from
  one address gets a bounded share of the event loop. Off by default (see ``admission``).
* ``counters`` (``stats``) counts messages in and out, drops by reason and disconnects by
  reason, with integer increments only on the hot paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn

import websockets
from amqtt.adapters import StreamWriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.session import OutgoingApplicationMessage, Session
from cryptography import x509
from transitions import MachineError

from broker.acl import (
    Principal,
    Role,
    client_id_allowed,
    filter_matches,
    may_publish,
    may_receive,
    may_subscribe,
    valid_filter,
)
from broker.admission import HandshakeGate
from broker.connect import RefusedConnect
from broker.events import ConnectionEvent, DeniedPublish, DisconnectReason, EventKind, Listeners
from broker.handler import (
    FLOW,
    REASON,
    SERVICE_FLOW,
    HardenedHandler,
    close_quietly,
    enqueue,
)
from broker.limits import Budgets, PacketTooLarge, SizeLimitedReader
from broker.packets import encode_suback, encode_unsuback
from broker.queues import LazyQueue
from broker.refusals import RefusalCounter, RefusalReason, reason_of
from broker.router import SubscriptionIndex
from broker.snapshot import Inflight, Queued, Retained, SavedSession, Snapshot
from broker.states import SessionStates
from broker.stats import BrokerStats, Counters, DropReason
from certs import CertsError, Identity

__all__ = ["HardenedBroker", "PeerCertificate", "peer_of"]

log = logging.getLogger(__name__)

PRINCIPAL = "baetyl.principal"
PEER = "baetyl.peer"
LISTENER_ATTR = "baetyl_listener"
# An asyncio.Event a session may carry, set once its connection's disconnect is handled (will
# published, session marked disconnected): what a take-over and a stop wait for.
DISCONNECTED = "baetyl.disconnected"
TAKE_OVER_WAIT = 1.0
# Seconds a graceful stop waits for the connections it closes to be handled as disconnected.
STOP_WAIT = 5.0
# Seconds a walk over the sessions (the gauges of ``stats``) is reused: /metrics is served
# without authentication, and one walk took 24 ms at 18,000 sessions.
GAUGES_MAX_AGE = 1.0


class PeerCertificate:
    """Serial and expiry of the certificate a connection was verified with."""

    __slots__ = ("not_after", "serial")

    def __init__(self, serial: int, not_after: datetime) -> None:
        self.serial = serial
        self.not_after = not_after


def _peer_of(ssl_object: ssl.SSLObject | None) -> tuple[Principal, PeerCertificate] | None:
    """The principal in the verified peer certificate of a live TLS connection."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    try:
        identity = Identity.from_certificate(cert)
    except CertsError as exc:
        # Refused at CONNECT as "no-identity", logged there at a bounded rate.
        log.debug("a certificate without a pybaetyl identity: %s", exc)
        return None
    principal = Principal.from_identity(identity)
    if principal is None:
        log.debug("a %s certificate, which this broker does not accept", identity.kind)
        return None
    return principal, PeerCertificate(cert.serial_number, cert.not_valid_after_utc)


# A connection reads at most its TLS read buffer per event-loop turn. A node's reads are
# up to one TLS record; a cloud service acknowledging the whole fleet's reports sends thousands
# of PUBACKs per turn, and at 4 KiB it fell behind (about 150 acks a turn, 300 msg/s at 10,000
# nodes), so a service connection reads up to asyncio's default.
NODE_TLS_READ_BUFFER = 16 * 1024
SERVICE_TLS_READ_BUFFER = 256 * 1024


class SharedReadBuffers:
    """One TLS read buffer per broker for all its connections, instead of one per connection.

    asyncio's ``SSLProtocol`` receives encrypted bytes into its buffer (``get_buffer``, then
    ``recv_into``) and copies them into its ``MemoryBIO`` at once (``buffer_updated``), in the
    same event-loop callback: the buffer holds nothing from one read to the next, so every
    connection of one event loop can use the same one. Measured: 4.1 KiB per idle connection
    (the per-connection buffer of ``broker.tls_read_buffer``, zero-filled), now used only during
    the handshake. A broker runs in one event loop; each broker has its own buffers.
    """

    __slots__ = ("node", "node_view", "service", "service_view")

    def __init__(self) -> None:
        self.node = bytearray(NODE_TLS_READ_BUFFER)
        self.node_view = memoryview(self.node)
        self.service = bytearray(SERVICE_TLS_READ_BUFFER)
        self.service_view = memoryview(self.service)

    @staticmethod
    def _protocol(writer: Any) -> Any:
        transport = getattr(writer, "transport", None)
        if transport is None:  # amqtt's adapter around the StreamWriter
            transport = getattr(getattr(writer, "_writer", None), "transport", None)
        return getattr(transport, "_ssl_protocol", None)

    def share(self, writer: Any, *, service: bool = False) -> None:
        """Make the connection read into the shared buffer, and forget its peer certificate's
        decoded dict (asyncio keeps it in the transport's extra info; 1.3 KiB, unused: identity
        is read from the DER certificate)."""
        protocol = self._protocol(writer)
        if protocol is None or not hasattr(protocol, "_ssl_buffer_view"):
            return  # not TLS, or an asyncio without the buffered SSL protocol
        buffer, view = (self.service, self.service_view) if service else (self.node, self.node_view)
        protocol._ssl_buffer = buffer  # get_buffer() reallocates only when this is too short
        protocol._ssl_buffer_view = view
        protocol.max_size = len(buffer)
        extra = getattr(protocol, "_extra", None)
        if isinstance(extra, dict):
            extra.pop("peercert", None)


DENIED_LOG_INTERVAL = 10.0
DENIED = "baetyl.denied"  # (time of the last log line, refusals since)
LOGGED_TOPIC_CHARS = 200


def _log_denied(session: Session, what: str, topic: str) -> None:
    """Log a refusal with the client's identity, at most once per interval per client.

    A client retrying a forbidden publish in a loop must not flood the log: the refusals in
    between are counted and reported with the next line.
    """
    now = time.monotonic()
    if len(topic) > LOGGED_TOPIC_CHARS:  # a hostile filter may be 64 KiB long
        topic = f"{topic[:LOGGED_TOPIC_CHARS]}... ({len(topic)} characters)"
    last, since = session.attributes.get(DENIED, (0.0, 0))
    if now - last < DENIED_LOG_INTERVAL:
        session.attributes[DENIED] = (last, since + 1)
        return
    session.attributes[DENIED] = (now, 0)
    principal: Principal | None = session.attributes.get(PRINCIPAL)
    more = f" ({since} more refused since the last line)" if since else ""
    log.warning(
        "denied %s of %r to %s%s",
        what,
        topic,
        principal.name if principal else session.client_id,
        more,
    )


LocalHandler = Callable[[str, bytes, Principal | None], None]


class LocalSubscriber:
    """An in-process subscriber (the cloud's own services): called synchronously per message.

    Its key in the subscription index contains ``:`` and ``.``, which no client id of a node,
    operator, service or plaintext client can (acl.client_id_allowed), so it never collides.
    """

    __slots__ = ("callback", "client_id")

    def __init__(self, client_id: str, callback: LocalHandler) -> None:
        self.client_id = client_id
        self.callback = callback


RETAINED_SCOPE_LEVELS = 3  # "$baetyl/node/<id>"


def _retained_scope(topic: str) -> str:
    """The first RETAINED_SCOPE_LEVELS levels of a topic (all of a shorter one)."""
    return "/".join(topic.split("/", RETAINED_SCOPE_LEVELS)[:RETAINED_SCOPE_LEVELS])


def _filter_scope(topic_filter: str) -> str | None:
    """The scope every topic a wildcard filter matches is in, if its first levels are literal."""
    levels = topic_filter.split("/", RETAINED_SCOPE_LEVELS)
    if len(levels) <= RETAINED_SCOPE_LEVELS:
        return None
    first = levels[:RETAINED_SCOPE_LEVELS]
    if any(level in ("+", "#") for level in first):
        return None
    return "/".join(first)


def _accepts(principal: Principal) -> Callable[[str], bool] | None:
    """The per-message check of a subscription, for the few roles that need one."""
    # Operators subscribe widely ($baetyl/#) but must not read what only a node may (the
    # secret values in resource answers): checked per message for them alone.
    return partial(may_receive, principal) if principal.role is Role.OPERATOR else None


def _slim(session: Session) -> None:
    """Swap amqtt's per-session Machine and queues for lighter equivalents (see states, queues)."""
    session.transitions = SessionStates(session)
    session.retained_messages = LazyQueue()
    session.delivered_message_queue = LazyQueue()


class HardenedBroker(Broker):  # type: ignore[misc] # amqtt is untyped
    """The amqtt broker core with identity, ACL and MQTT 3.1.1 fixes; see the module docstring."""

    # The node broker's handler defers acknowledgements until its spool commits (broker/node/).
    handler_base: type[HardenedHandler] = HardenedHandler

    def __init__(
        self,
        config: dict[str, Any],
        *,
        tls_context: ssl.SSLContext | None,
        local_listeners: frozenset[str],
        connect_timeout: float,
        max_packet_size: int,
        max_connections: int,
        events: Listeners,
        budgets: Budgets | None = None,
        refusal_log_interval: float = 10.0,
        handshakes_per_source: int = 0,
        revoked: Callable[[], frozenset[int]] = frozenset,
        restored: Snapshot | None = None,
    ) -> None:
        super().__init__(config)
        self._restored = restored  # installed at start, before the listeners accept
        self._revoked = revoked  # the serials on the CRL now (ReloadableTLS.revoked)
        self._budgets = budgets or Budgets()
        self._tls_context = tls_context
        self._local_listeners = local_listeners
        self._connect_timeout = connect_timeout
        self._max_packet_size = max_packet_size
        self._max_connections = max_connections
        self._events = events
        self._open_connections = 0  # past the TLS handshake (see _accept)
        self._handshaking = 0  # TLS handshakes in progress, waiting for admission included
        self._read_buffers = SharedReadBuffers()
        self.refusals = RefusalCounter(refusal_log_interval)
        self._handshakes = HandshakeGate(handshakes_per_source)
        self.counters = Counters()
        self._gauges: tuple[dict[str, int], int, int] | None = None  # the last walk (stats)
        self._gauges_at = 0.0
        # This broker's handler class carries its callbacks: set on each handler instead, they
        # grew every connection's attribute dict by 1.6 KiB.
        self._handler_class: type[HardenedHandler] = type(
            "BrokerHandler",
            (self.handler_base,),
            {
                "on_publish": staticmethod(self._on_client_publish),
                "on_subscribe": staticmethod(self._on_subscribe),
                "on_unsubscribe": staticmethod(self._on_unsubscribe),
                "subscription_limit": staticmethod(self._subscription_limit),
                "on_queue_drop": staticmethod(self._on_queue_drop),
                "max_packet_size": max_packet_size,
            },
        )
        self._index: SubscriptionIndex[str, Session | LocalSubscriber] = SubscriptionIndex()
        # Retained topics by their first RETAINED_SCOPE_LEVELS levels: a wildcard SUBSCRIBE of a
        # node scans its own retained topics, not the fleet's (every node's presence is retained:
        # scanning 10,000 took 45 ms a filter, 1.4 s for one SUBSCRIBE of 32 filters).
        self._retained_scopes: dict[str, set[str]] = {}
        self._local_count = 0

    # -- listeners ------------------------------------------------------------------------------

    async def _start_listeners(self) -> None:
        # amqtt's start() has just emptied the sessions and retained messages: the snapshot
        # goes in now, before any connection can be accepted.
        if self._restored is not None:
            self._restore(self._restored)
            self._restored = None
        await super()._start_listeners()

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        if self._tls_context is None:
            raise AMQTTError("a TLS listener was configured without a TLS context")
        return self._tls_context

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: Any,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        kind = str(getattr(listener_type, "value", listener_type))
        if kind == "ws":
            # Stock sets neither: a WebSocket message (one MQTT packet or more) of up to 1 MiB,
            # and no limit on the opening handshake. Both follow our limits here.
            return await websockets.serve(
                partial(self.ws_connected, listener_name=listener_name),
                address,
                port,
                ssl=ssl_context,
                subprotocols=[websockets.Subprotocol("mqtt")],
                max_size=self._max_packet_size,
                open_timeout=self._connect_timeout,
            )
        if kind != "tcp":
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
        # TLS is started by _tls_connected, not by asyncio (see the module docstring).
        connected = (
            partial(self._tls_connected, listener_name=listener_name, context=ssl_context)
            if ssl_context is not None
            else partial(self.stream_connected, listener_name=listener_name)
        )
        return await asyncio.start_server(connected, address, port, reuse_address=True)

    async def _tls_connected(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener_name: str,
        context: ssl.SSLContext,
    ) -> None:
        """Run the TLS handshake of a new connection; count, log and forget a refused one."""
        # Until TLS starts, the socket's bytes (the ClientHello) must stay in the kernel: read
        # into the StreamReader while this connection waits for its turn, they would be lost to
        # the handshake. start_tls resumes reading.
        transport = writer.transport
        source = _source(writer)
        if self._handshaking + self._open_connections >= self._max_connections:
            # Counted from the accept: silent sockets each hold a socket and a task until the
            # connect timeout, and a full broker would otherwise do a whole handshake to refuse.
            self.refusals.refuse(
                source,
                RefusalReason.TOO_MANY_CONNECTIONS,
                f"{self._open_connections} connections open, {self._handshaking} handshakes "
                "in progress",
            )
            transport.abort()
            return
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        gate = self._handshakes
        if gate.full(source):
            self.refusals.refuse(
                source,
                RefusalReason.TOO_MANY_HANDSHAKES,
                f"{gate.in_progress(source)} handshakes in progress, more waiting",
            )
            writer.transport.abort()
            return
        entered = False
        self._handshaking += 1
        try:
            # Stock passed no handshake timeout: a silent TLS client would hold a socket 60 s.
            # The timeout covers the wait for a slot (broker/admission.py) and the handshake.
            async with asyncio.timeout(self._connect_timeout):
                await gate.enter(source)
                entered = True
                await writer.start_tls(context, ssl_handshake_timeout=self._connect_timeout + 1)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.refusals.refuse(source, reason_of(exc), _detail(exc))
            _forget(exc)
            writer.transport.abort()
            return
        except BaseException:  # cancelled, while waiting for admission say: leave no socket open
            writer.transport.abort()
            raise
        finally:
            # No await from here to _accept's count: the connection is always counted once.
            self._handshaking -= 1
            if entered:
                gate.leave(source)
        await self.stream_connected(reader, writer, listener_name)

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        self._read_buffers.share(writer)
        adapter = StreamWriterAdapter(writer)
        await self._accept(listener_name, SizeLimitedReader(reader, self._max_packet_size), adapter)

    async def ws_connected(self, websocket: Any, listener_name: str) -> None:
        from amqtt.adapters import WebSocketsReader, WebSocketsWriter

        await self._accept(listener_name, WebSocketsReader(websocket), WebSocketsWriter(websocket))

    async def _accept(self, listener_name: str, reader: Any, writer: Any) -> None:
        if self._open_connections >= self._max_connections:
            # Stock queues sockets over its per-listener limit forever; we refuse them.
            peer = writer.get_peer_info()
            self.refusals.refuse(
                str(peer[0]) if peer else "unknown",
                RefusalReason.TOO_MANY_CONNECTIONS,
                f"{self._open_connections} connections open",
            )
            await close_quietly(writer)
            return
        setattr(writer, LISTENER_ATTR, listener_name)
        self._open_connections += 1
        try:
            await self._client_connected(listener_name, reader, writer)
        except PacketTooLarge as exc:
            log.warning("closing a connection on listener %s: %s", listener_name, exc)
            await close_quietly(writer)
        except (OSError, ssl.SSLError) as exc:
            log.info("connection error on listener %s: %r", listener_name, exc)
            await close_quietly(writer)
        finally:
            self._open_connections -= 1

    # -- CONNECT -----------------------------------------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[HardenedHandler, Session]:
        # Every failure here is counted and logged by ``refusals`` (rate-limited), then raised as
        # an AMQTTError, whose "Failed to initialize client session" warning amqtt logs for each
        # connection: broker/embedded.py turns that one down to DEBUG.
        source, client = str(remote_address), f"{remote_address}:{remote_port}"
        try:
            handler, session = await asyncio.wait_for(
                self._handler_class.init_from_connect(reader, writer, self.plugins_manager),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            why = f"no CONNECT from {client} within {self._connect_timeout:g} s"
            await self._refuse_connect(writer, source, RefusalReason.CONNECT_TIMEOUT, why, exc)
        except PacketTooLarge as exc:
            why = f"CONNECT from {client}: {exc}"
            await self._refuse_connect(writer, source, RefusalReason.PACKET_TOO_LARGE, why, exc)
        except RefusedConnect as exc:
            await self._refuse_connect(writer, source, exc.reason, str(exc), exc)
        except MQTTError as exc:  # amqtt's parser: reserved flags set, an empty client id, ...
            why = f"invalid CONNECT from {client}: {exc}"
            await self._refuse_connect(writer, source, RefusalReason.MALFORMED_CONNECT, why, exc)
        except NoDataError as exc:  # closed before a whole CONNECT: nothing to refuse
            log.info("%s closed its connection before a whole CONNECT", client)
            await close_quietly(writer)
            raise AMQTTError(exc) from exc
        _slim(session)

        listener = getattr(writer, LISTENER_ATTR, "")
        principal, peer, refusal = await self._identify(listener, writer, session)
        if refusal is None and peer is not None and peer.serial in self._revoked():
            # Its handshake finished under the previous CRL, and the reload's sweep of the
            # sessions (EmbeddedBroker._drop_revoked) ran before this CONNECT made one.
            refusal = RefusalReason.REVOKED, f"certificate serial {peer.serial:x} is revoked"
        if refusal is not None:
            # Refuse before looking at any existing session: stock would already have deleted or
            # taken over the legitimate owner's session at this point.
            reason, why = refusal
            self.refusals.refuse(
                str(remote_address), reason, f"CONNECT as {session.client_id!r}: {why}"
            )
            with contextlib.suppress(OSError):
                await ConnackPacket.build(0, self._connack_code(reason)).to_stream(writer)
            await close_quietly(writer)
            raise MQTTError(why)

        existing = self._sessions.get(session.client_id)
        if existing is not None and existing[0].transitions.is_connected():
            await self._take_over(*existing)
        if existing is not None and (
            existing[0].clean_session or existing[0].attributes.get(PRINCIPAL) != principal
        ):
            # A clean session ends with its connection [MQTT-3.1.2-6] (stock resumes it until its
            # session monitor runs, up to 1 s later); a session left by another principal with
            # this client id (a plaintext client, say) is never resumed by someone else.
            await self._delete_session(session.client_id)
            existing = None
        if session.clean_session or existing is None:
            if session.clean_session:
                await self._delete_session(session.client_id)
            session.parent = 0
        else:
            old = existing[0]
            for attr in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "will_retain",
                "keep_alive",
                "username",
                "password",
                "remote_address",
                "remote_port",
                "ssl_object",
            ):
                setattr(old, attr, getattr(session, attr))
            session = old
            session.parent = 1
        session.attributes[PRINCIPAL] = principal
        session.attributes[PEER] = peer
        if principal is not None and principal.role is Role.SERVICE:
            self._read_buffers.share(writer, service=True)
            session.attributes[FLOW] = SERVICE_FLOW
        else:
            session.attributes.pop(FLOW, None)
        session.attributes.pop(REASON, None)
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)  # [MQTT-3.1.2-24]
        return handler, session

    async def _refuse_connect(
        self,
        writer: Any,
        source: str,
        reason: RefusalReason,
        why: str,
        cause: BaseException,
    ) -> NoReturn:
        """Count and log a CONNECT refused before it named a client, close, and end the task."""
        self.refusals.refuse(source, reason, why)
        await close_quietly(writer)
        raise AMQTTError(why) from cause

    async def _take_over(self, old_session: Session, old_handler: HardenedHandler) -> None:
        """Close the connection that holds a client id now wanted by a new one [MQTT-3.1.4-2].

        Stock only popped a clean session (leaving its client connected, receiving nothing), and
        on resume let the old connection's message loop mark the shared session disconnected
        after the new connection had taken it. Here the old loop finishes first.
        """
        finished = asyncio.Event()  # set by the old connection's _handle_disconnect
        old_session.attributes[REASON] = DisconnectReason.SESSION_TAKEN_OVER
        old_session.attributes[DISCONNECTED] = finished
        await old_handler.handle_connection_closed()
        await old_handler.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), TAKE_OVER_WAIT)

    async def _identify(
        self, listener: str, writer: Any, session: Session
    ) -> tuple[Any, Any, tuple[RefusalReason | str, str] | None]:
        """Who a CONNECT speaks for, its peer certificate, and why it is refused (None: it is not).

        The node broker (broker/node/) overrides this: its clients are devices and its agent.
        """
        principal, peer = self._principal_of(listener, writer)
        return principal, peer, self._refusal(principal, session)

    def _connack_code(self, reason: RefusalReason | str) -> int:
        """The CONNACK return code a refused CONNECT gets: 5 (not authorized) here."""
        return int(NOT_AUTHORIZED)

    def _principal_of(self, listener: str, writer: Any) -> tuple[Principal | None, Any]:
        if listener in self._local_listeners:
            return Principal.local(), None
        found = _peer_of(writer.get_ssl_info())
        if found is None:
            return None, None
        return found

    @staticmethod
    def _refusal(principal: Principal | None, session: Session) -> tuple[RefusalReason, str] | None:
        if principal is None:
            return RefusalReason.NO_IDENTITY, "no verified pybaetyl certificate"
        if not client_id_allowed(principal, session.client_id or ""):
            return (
                RefusalReason.CLIENT_ID,
                f"client id {session.client_id!r} does not belong to {principal.name!r}",
            )
        if session.will_flag and not may_publish(principal, session.will_topic or ""):
            return (
                RefusalReason.WILL_TOPIC,
                f"{principal.name!r} may not publish its will to {session.will_topic!r}",
            )
        return None

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        # Identity is enforced at CONNECT above; no auth plugin, so sessions are never anonymous
        # (amqtt drops offline queues of anonymous sessions).
        return True

    def create_offline_session(self, client_id: str) -> tuple[HardenedHandler, Session]:
        session = Session()
        session.client_id = client_id
        _slim(session)
        handler = self._handler_class(self.plugins_manager, session)
        session.transitions.disconnect()
        return handler, session

    async def _handle_client_session(
        self,
        reader: Any,
        writer: Any,
        client_session: Session,
        handler: HardenedHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    old_session, old_handler = self._sessions[client_session.client_id]
                    old_session.attributes[REASON] = DisconnectReason.SESSION_TAKEN_OVER
                    await old_handler.handle_connection_closed()
                    await old_handler.stop()
                    break
                await asyncio.sleep(0.05)
        handler.attach(client_session, reader, writer)
        self._sessions[client_session.client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(True)
        principal: Principal = client_session.attributes[PRINCIPAL]
        log.info("%s connected as %s", client_session.client_id, principal.name)
        self._emit(EventKind.CONNECTED, client_session, None)
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )
        await handler.start()  # also resends unacknowledged QoS 1 messages with DUP set
        await self._publish_session_retained_messages(client_session)
        # Stock then sent every retained message matching any client's filters: removed.
        await self._client_message_loop(client_session, handler)

    def _emit(self, kind: EventKind, session: Session, reason: DisconnectReason | None) -> None:
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        self._events.emit(
            ConnectionEvent(
                kind=kind,
                client_id=session.client_id,
                principal=principal.name if principal else "",
                at=datetime.now(UTC),
                reason=reason,
                role=str(principal.role) if principal else "",
            )
        )

    async def _handle_disconnect(
        self, client_session: Session, handler: HardenedHandler, disconnect_waiter: Any
    ) -> None:
        result = disconnect_waiter.result()
        if isinstance(result, DisconnectPacket):
            reason = DisconnectReason.CLIENT_DISCONNECT
        else:
            reason = client_session.attributes.get(REASON, DisconnectReason.CONNECTION_LOST)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        log.info("%s disconnected: %s", client_session.client_id, reason)
        self.counters.disconnects[DisconnectReason(reason)] += 1
        self._emit(EventKind.DISCONNECTED, client_session, DisconnectReason(reason))
        disconnected: asyncio.Event | None = client_session.attributes.pop(DISCONNECTED, None)
        if disconnected is not None:
            disconnected.set()

    # -- ACL ---------------------------------------------------------------------------------

    async def _topic_filtering(self, session: Session | None, topic: str, action: Action) -> bool:
        principal: Principal | None = session.attributes.get(PRINCIPAL) if session else None
        if principal is None:
            return False
        if action == Action.SUBSCRIBE:
            allowed = may_subscribe(principal, topic)
        elif action == Action.PUBLISH:
            allowed = may_publish(principal, topic)
        else:
            allowed = may_receive(principal, topic)
        if not allowed:
            log.warning("denied %s of %r to %s", action.value, topic, principal.name)
        return allowed

    async def _client_message_loop(self, client_session: Session, handler: HardenedHandler) -> None:
        # Stock waits on four futures (disconnect, subscribe, unsubscribe, delivery), each a task
        # re-created after every event. Publishes and (un)subscriptions are now handled inline by
        # the handler's reader loop, so only the disconnect is left to wait for.
        result = await handler.wait_disconnect()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(result)
        await self._handle_disconnect(client_session, handler, done)

    async def _on_subscribe(
        self,
        session: Session,
        handler: HardenedHandler,
        packet_id: int,
        topics: list[tuple[str, int]],
    ) -> None:
        codes = [await self.add_subscription(subscription, session) for subscription in topics]
        handler.send_bytes(encode_suback(packet_id, codes))
        for (topic_filter, _requested), granted in zip(topics, codes, strict=True):
            if granted != 0x80:  # [MQTT-3.3.1-6]: retained messages follow the SUBACK
                await self._publish_retained_messages_for_subscription(
                    (topic_filter, granted), session
                )

    async def _on_unsubscribe(
        self, session: Session, handler: HardenedHandler, packet_id: int, filters: list[str]
    ) -> None:
        for topic_filter in filters:
            self._del_subscription(topic_filter, session)
        handler.send_bytes(encode_unsuback(packet_id))

    def _on_client_publish(
        self, session: Session, topic: str, data: bytes, qos: int, retain: bool
    ) -> None:
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        over = self._budgets.topic_refusal(topic)
        if principal is None or over is not None or not may_publish(principal, topic):
            # MQTT 3.1.1 has no negative PUBACK: the message is dropped and the refusal logged.
            self.counters.drops[DropReason.DENIED] += 1
            _log_denied(session, "publish" if over is None else f"publish ({over})", topic)
            self._events.emit_denied(
                DeniedPublish(
                    client_id=session.client_id or "",
                    principal=principal.name if principal else "",
                    role=str(principal.role) if principal else "",
                    topic=topic,
                )
            )
            return
        self.counters.received += 1
        self._route(topic, data, qos, principal)
        if retain:
            self._retain(topic, data, qos)

    # -- delivery ------------------------------------------------------------------------------

    def _route(
        self, topic: str, data: bytes, publish_qos: int | None, sender: Principal | None = None
    ) -> None:
        """Deliver to every matching subscription now: no queue, no task per message."""
        counters = self.counters
        for _filter, subscription in self._index.match(topic):
            if subscription.accepts is not None and not subscription.accepts(topic):
                continue
            target = subscription.value
            if isinstance(target, LocalSubscriber):
                counters.sent += 1
                try:
                    target.callback(topic, data, sender)
                except Exception:
                    log.exception("in-process subscriber %s failed on %r", target.client_id, topic)
                continue
            qos = subscription.qos if publish_qos is None else min(publish_qos, subscription.qos)
            entry = self._sessions.get(target.client_id)
            if entry is not None and entry[0] is target and target.transitions.is_connected():
                counters.sent += 1
                entry[1].deliver(topic, data, qos)
            elif not target.clean_session and qos > 0:
                counters.sent += 1
                if enqueue(target, topic, data, qos):
                    counters.drops[DropReason.QUEUE_FULL] += 1
            else:
                counters.drops[DropReason.OFFLINE] += 1

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        # Wills and internal publishes: routed at once instead of through amqtt's queue.
        if topic:
            self._route(topic, bytes(data or b""), force_qos)

    def _retain(self, topic: str, data: bytes, qos: int | None) -> None:
        scope = _retained_scope(topic)
        if data:
            self._retained_messages[topic] = RetainedApplicationMessage(None, topic, data, qos)
            self._retained_scopes.setdefault(scope, set()).add(topic)
        else:
            self._retained_messages.pop(topic, None)  # an empty retained message clears it
            topics = self._retained_scopes.get(scope)
            if topics is not None:
                topics.discard(topic)
                if not topics:
                    del self._retained_scopes[scope]

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if topic_name:
            self._retain(topic_name, bytes(data or b""), qos)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        if principal is None or not valid_filter(topic_filter):
            return 0x80
        over = self._budgets.topic_refusal(topic_filter)
        if over is not None:  # checked before the ACL, which splits the filter into levels
            _log_denied(session, f"subscription ({over})", topic_filter)
            return 0x80
        if not may_subscribe(principal, topic_filter):
            _log_denied(session, "subscription", topic_filter)
            return 0x80
        limit = self._budgets.subscriptions_for(principal.role)
        if self._index.count(session.client_id) >= limit and not self._index.holds(
            session.client_id, topic_filter
        ):
            _log_denied(session, f"subscription (over the budget of {limit})", topic_filter)
            return 0x80
        qos = min(qos, 2)
        self._index.add(topic_filter, session.client_id, session, qos, _accepts(principal))
        return qos

    def _subscription_limit(self, session: Session) -> int:
        """How many subscriptions the session's client may hold (its budget)."""
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        return self._budgets.subscriptions_for(principal.role if principal else None)

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        return int(self._index.remove(a_filter, session.client_id))

    async def _del_all_subscriptions(self, session: Session) -> None:
        if session.client_id is not None:
            self._index.remove_all(session.client_id)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        # The offline queue, sent through the in-flight window (stock resent it with RETAIN set).
        handler = self._get_handler(session)
        if handler is not None:
            handler.drain()

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, subscription_qos = subscription
        handler = self._get_handler(session)
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        if handler is None or principal is None:
            return
        if "+" in topic_filter or "#" in topic_filter:
            scope = _filter_scope(topic_filter)
            if scope is None:  # a wildcard in the first levels: every retained topic is a candidate
                topics: Iterable[str] = self._retained_messages
            else:  # a node's filters: only the retained topics under $baetyl/node/<id>
                topics = self._retained_scopes.get(scope, ())
            candidates = [
                retained
                for topic in topics
                if filter_matches(topic_filter, topic)
                and (retained := self._retained_messages.get(topic)) is not None
            ]
        else:  # the common case: one dictionary lookup, whatever the number of retained topics
            found = self._retained_messages.get(topic_filter)
            candidates = [found] if found is not None else []
        for retained in candidates:
            if not may_receive(principal, retained.topic):
                continue
            retained_qos = retained.qos if retained.qos is not None else subscription_qos
            qos = min(subscription_qos, retained_qos)
            handler.deliver(retained.topic, bytes(retained.data), qos, retain=True)

    # -- a graceful stop and the next start (see snapshot) ------------------------------------

    async def stop_serving(self) -> None:
        """Accept no more connections and close every client's, keeping the sessions.

        Each closed connection is handled as any lost one (its will is published, its session
        marked disconnected, its unacknowledged messages kept for redelivery), so what is left
        is exactly what ``snapshot`` saves. amqtt's ``shutdown`` then drops it all.
        """
        for server in self._servers.values():
            instance = server.instance
            if instance is not None:
                instance.close()  # stops listening; wait_closed is left to shutdown
        closing: list[tuple[Session, HardenedHandler, asyncio.Event]] = []
        for session, handler in list(self._sessions.values()):
            if session.transitions.is_connected():
                session.attributes.setdefault(REASON, DisconnectReason.SHUTDOWN)
                done = asyncio.Event()
                session.attributes[DISCONNECTED] = done
                closing.append((session, handler, done))
        if not closing:
            return
        try:
            # A client that reads nothing would hold its close (a drain) forever: past the
            # bound, the closes are cancelled, which aborts their transports (close_quietly).
            async with asyncio.timeout(STOP_WAIT):
                await asyncio.gather(
                    *(handler.stop() for _s, handler, _d in closing), return_exceptions=True
                )
                await asyncio.gather(*(done.wait() for _s, _h, done in closing))
        except TimeoutError:
            left = [s.client_id for s, _h, done in closing if not done.is_set()]
            log.warning(
                "%d connections were not closed within %g s: %s", len(left), STOP_WAIT, left[:5]
            )

    def snapshot(self) -> Snapshot:
        """The persistent sessions (clean session 0, with an identity) and retained messages.

        Copies of the lists, not of the payloads: a caller may write it from another thread.
        """
        sessions = []
        for client_id, (session, _handler) in self._sessions.items():
            principal: Principal | None = session.attributes.get(PRINCIPAL)
            if session.clean_session is not False or principal is None:
                continue
            sessions.append(
                SavedSession(
                    client_id=client_id,
                    role=principal.role,
                    principal=principal.name,
                    packet_id=session._packet_id,
                    subscriptions=[
                        (topic_filter, subscription.qos)
                        for topic_filter, subscription in self._index.filters_of(client_id).items()
                    ],
                    inflight_out=[
                        Inflight(
                            m.packet_id,
                            m.topic,
                            int(m.qos),
                            bytes(m.data),
                            bool(m.retain),
                            m.pubrec_packet is not None,
                        )
                        for m in session.inflight_out.values()
                    ],
                    inflight_in=list(session.inflight_in),
                    queue=[
                        Queued(m.topic, int(m.qos), bytes(m.data), bool(m.retain))
                        for m in session.retained_messages
                    ],
                )
            )
        retained = [
            Retained(topic, bytes(m.data), m.qos) for topic, m in self._retained_messages.items()
        ]
        return Snapshot(sessions=sessions, retained=retained, saved_at=time.time())

    def _restore(self, snapshot: Snapshot) -> None:
        """Install a snapshot's sessions (disconnected, waiting for their clients) and retained
        messages. Subscriptions pass the ACL again: a rule tightened since they were made holds."""
        refused = 0
        for saved in snapshot.sessions:
            principal = Principal(saved.role, saved.principal)
            handler, session = self.create_offline_session(saved.client_id)
            session.clean_session = False
            session.attributes[PRINCIPAL] = principal
            if principal.role is Role.SERVICE:
                session.attributes[FLOW] = SERVICE_FLOW  # its queue keeps a service's bound
            session._packet_id = saved.packet_id
            for m in saved.inflight_out:
                message = OutgoingApplicationMessage(
                    m.packet_id, m.topic, m.qos, m.payload, m.retain
                )
                if m.released:
                    message.pubrec_packet = True
                session.inflight_out[m.packet_id] = message
            for packet_id in saved.inflight_in:
                session.inflight_in[packet_id] = None
            for q in saved.queue:
                session.retained_messages.put_nowait(
                    OutgoingApplicationMessage(None, q.topic, q.qos, q.payload, q.retain)
                )
            self._sessions[saved.client_id] = (session, handler)
            accepts = _accepts(principal)
            for topic_filter, qos in saved.subscriptions:
                if may_subscribe(principal, topic_filter):
                    self._index.add(topic_filter, saved.client_id, session, qos, accepts)
                else:
                    refused += 1
        for retained in snapshot.retained:
            self._retain(retained.topic, retained.payload, retained.qos)
        log.info(
            "restored %d persistent sessions (%d messages held for them) and %d retained messages",
            len(snapshot.sessions),
            snapshot.messages,
            len(snapshot.retained),
        )
        if refused:
            log.warning("dropped %d restored subscriptions the ACL no longer allows", refused)

    # -- control from the cloud ------------------------------------------------------------------

    def subscribe_local(self, topic_filter: str, callback: LocalHandler) -> Callable[[], None]:
        """Call ``callback(topic, payload, sender)`` for every message matching ``topic_filter``.

        The callback runs synchronously inside routing: it must be quick and must not block.
        Returns a function that removes the subscription.
        """
        if not valid_filter(topic_filter):
            raise ValueError(f"{topic_filter!r} is not a valid MQTT topic filter.")
        self._local_count += 1
        key = f"local:{self._local_count}."
        self._index.add(topic_filter, key, LocalSubscriber(key, callback), 1)

        def unsubscribe() -> None:
            self._index.remove_all(key)

        return unsubscribe

    def _on_queue_drop(self) -> None:
        self.counters.drops[DropReason.QUEUE_FULL] += 1

    def stats(self) -> BrokerStats:
        """A snapshot of the counters, with the gauges that need a walk over the sessions.

        The walk is reused for ``GAUGES_MAX_AGE`` seconds, so scrapes in a burst cost one walk;
        the counters are read fresh each time.
        """
        now = time.monotonic()
        if self._gauges is None or now - self._gauges_at >= GAUGES_MAX_AGE:
            self._gauges, self._gauges_at = self._session_gauges(), now
        roles, queued, inflight = self._gauges
        counters = self.counters
        return BrokerStats(
            connections=dict(roles),
            open_connections=self._open_connections,
            messages_received=counters.received,
            messages_sent=counters.sent,
            drops={str(reason): n for reason, n in counters.drops.items()},
            refusals={str(reason): n for reason, n in self.refusals.counts.items()},
            disconnects={str(reason): n for reason, n in counters.disconnects.items()},
            queued_messages=queued,
            inflight_messages=inflight,
            sessions=len(self._sessions),
        )

    def _session_gauges(self) -> tuple[dict[str, int], int, int]:
        """Connected clients by role, queued messages and in-flight messages, over all sessions."""
        roles: dict[str, int] = dict.fromkeys((str(role) for role in Role), 0)
        queued = inflight = 0
        for session, _handler in self._sessions.values():
            queued += session.retained_messages.qsize()
            inflight += len(session.inflight_out)
            if session.transitions.state != "connected":
                continue
            principal: Principal | None = session.attributes.get(PRINCIPAL)
            if principal is not None:
                roles[str(principal.role)] = roles.get(str(principal.role), 0) + 1
        return roles, queued, inflight

    def sessions_where(self, predicate: Callable[[Session], bool]) -> list[str]:
        """Client ids of connected sessions for which ``predicate`` holds."""
        return [
            client_id
            for client_id, (session, _) in self._sessions.items()
            if session.transitions.state == "connected" and predicate(session)
        ]

    async def disconnect_client(self, client_id: str, reason: DisconnectReason) -> bool:
        """Close a client's connection now; its session and will are dropped."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session, _handler = entry
        session.attributes[REASON] = reason
        session.will_flag = False
        await self._cleanup_session(client_id)
        return True


def _source(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _detail(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return type(exc).__name__


def _forget(exc: BaseException | None) -> None:
    """Clear the tracebacks of a handled exception and of those it chains to.

    A traceback holds the frames it passed through, and they hold the exception (and asyncio's
    waiter holding it, the SSL protocol, its buffers): a cycle only the collector reclaims. Once
    cleared, reference counting frees the refused connection as soon as it is closed.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def peer_of(session: Session) -> PeerCertificate | None:
    found: PeerCertificate | None = session.attributes.get(PEER)
    return found

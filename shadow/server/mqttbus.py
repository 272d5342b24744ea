"""The bus on an external MQTT broker cluster: this cloud replica is a privileged MQTT 5 client.

Several replicas run side by side on one broker (Mosquitto, EMQX, VerneMQ, HiveMQ). Each node
request (``report``, ``desire/get``, ``resource/get``) must be handled by exactly one of them,
so the replicas partition the nodes: every replica subscribes to all requests and handles those
of the nodes it owns. Ownership is rendezvous hashing of the node id over the live replicas; a
replica announces itself with a retained message on ``$baetyl/cloud/replicas/<member>`` and
leaves an empty retained Last Will there, so when it dies the others take its nodes over at
once. One node's requests always go to the same replica, in order. This works on every broker.

MQTT 5 shared subscriptions (``$share/<group>/$baetyl/node/+/report``) are not used: Mosquitto
2.0 never delivers ``$``-topics to them (tests/scaleout/test_partitioning.py shows it), and no
broker that does could be run in the tests, so that mode was removed rather than kept untested.

While the replicas' views of who is alive differ (milliseconds after one joins or dies) a
request may be handled twice, which the store's conditional writes make harmless (the second
applies on the first's result), or not at all, which the node's retry covers.

Presence comes from the nodes' own messages: on connect a node publishes
``{"online": true, "session": S}`` to ``$baetyl/node/<id>/presence`` (retained), and leaves the
Last Will ``{"online": false, "session": S}`` on the same topic. Every replica subscribes to
presence, so each knows which nodes are online. A will that arrives after the node's next
session came up (its ``session`` is not the current one) is ignored. Refused publishes are not
visible to a client of an external broker: ``on_denied`` never fires.

The session is clean (MQTT 5 clean start, no session expiry): a request in flight to a replica
that dies is dropped, and the node sends it again when no answer comes (the agent does; see
edge/reports.py). Nothing is *accepted* before it is durable, so nothing accepted is lost.

paho runs its network loop on its own thread; every message and event is handed to the asyncio
loop that entered the bus, so handlers run there, as with the embedded bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker import filter_matches
from shadow.errors import ShadowError
from shadow.server.bus import Denied, MessageHandler, Presence
from shadow.topics import PREFIX, PRESENCE, valid_node_id

__all__ = ["MEMBERS_FILTER", "PRESENCE_FILTER", "BusError", "MqttBus", "owner", "parse_presence"]

log = logging.getLogger(__name__)

PRESENCE_FILTER = f"{PREFIX}+/{PRESENCE}"
MEMBERS = "$baetyl/cloud/replicas/"
MEMBERS_FILTER = MEMBERS + "+"
_MAX_PRESENCE_BYTES = 256


class BusError(ShadowError):
    """The external broker could not be reached or refused this replica."""


def parse_presence(topic: str, payload: bytes) -> tuple[str, bool, str] | None:
    """``(node_id, online, session)`` of a presence message, or None if it is not a valid one."""
    if not topic.startswith(PREFIX) or not topic.endswith("/" + PRESENCE):
        return None
    node_id = topic[len(PREFIX) : -len(PRESENCE) - 1]
    if not valid_node_id(node_id) or len(payload) > _MAX_PRESENCE_BYTES:
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    online, session = body.get("online"), body.get("session", "")
    if not isinstance(online, bool) or not isinstance(session, str):
        return None
    return node_id, online, session


def owner(node_id: str, members: Iterable[str]) -> str:
    """The member that handles ``node_id``: rendezvous (highest random weight) hashing.

    Every replica computes the same owner from the same members; when a member leaves, only
    its nodes move.
    """
    return max(
        members,
        key=lambda member: hashlib.blake2b(
            f"{member}\x00{node_id}".encode(), digest_size=8
        ).digest(),
    )


def _node_of(topic: str) -> str | None:
    if not topic.startswith(PREFIX):
        return None
    node_id, sep, _rest = topic[len(PREFIX) :].partition("/")
    return node_id if sep and node_id else None


class MqttBus:
    """The bus on an external broker; see the module docstring.

    ::

        bus = MqttBus(host="mqtt", port=8884, client_id="service:cloud/r1", member="r1", tls=ctx)
        async with bus:
            async with ShadowService(bus, store, shared_store=True) as service: ...
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        member: str,
        tls: ssl.SSLContext,
        keepalive: int = 30,
        connect_timeout: float = 15.0,
    ) -> None:
        if not member or any(c in member for c in "/+#\x00"):
            raise ValueError(f"{member!r} is not a member name: use one topic level.")
        self._host, self._port = host, port
        self._client_id = client_id
        self._member = member
        self._members: set[str] = set()  # live replicas, as announced (ourselves always)
        self._owners: dict[str, bool] = {}  # node -> handled here, for the current members
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handlers: list[tuple[str, MessageHandler]] = []
        self._presence_listeners: list[Callable[[Presence], None]] = []
        self._presence: dict[str, tuple[bool, str]] = {}  # node -> (online, session)
        self._lock = threading.Lock()  # guards _handlers for paho's thread (on_connect)
        self._connected = threading.Event()  # the first connect's answer came
        self._up = False  # connected now (paho's thread writes it, a bool: atomic)
        self._refused: str | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.tls_set_context(tls)
        # Gone (crashed, cut off): the broker clears our announcement for the others.
        self._client.will_set(self._member_topic, b"", qos=1, retain=True)
        self._client.max_inflight_messages_set(200)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        try:
            self._client.connect_async(
                self._host,
                self._port,
                self._keepalive,
                clean_start=True,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise BusError(f"cannot reach the MQTT broker {self._where}: {exc}") from None
        self._client.loop_start()
        connected = await asyncio.to_thread(self._connected.wait, self._connect_timeout)
        if not connected or self._refused is not None:
            self._client.loop_stop()
            reason = self._refused or f"no answer within {self._connect_timeout:g} s"
            raise BusError(
                f"the MQTT broker {self._where} did not take this replica ({reason}); check "
                "bus.url, that the broker trusts our CA and that its ACL gives this service "
                "certificate $baetyl/# (baetyl broker export-config)."
            )
        log.info("connected to the MQTT broker %s as %s", self._where, self._client_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving: the others take our nodes over now, not at a timeout.
        self._client.publish(self._member_topic, b"", qos=1, retain=True)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    @property
    def _member_topic(self) -> str:
        return MEMBERS + self._member

    @property
    def members(self) -> frozenset[str]:
        """The replicas this one knows to be alive (itself included)."""
        return frozenset(self._members | {self._member})

    @property
    def connected(self) -> bool:
        """Whether the session with the broker is up now (paho reconnects by itself)."""
        return self._up

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    # -- the Bus interface -------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("could not publish to %s: %s", topic, mqtt.error_string(info.rc))

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> Callable[[], None]:
        """Every replica hears each message of a node; only the node's owner handles it."""
        entry = (topic_filter, handler)
        with self._lock:
            self._handlers.append(entry)
        self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._handlers:
                    self._handlers.remove(entry)
                    remaining = any(f == topic_filter for f, _h in self._handlers)
                else:
                    remaining = True
            if not remaining:
                self._client.unsubscribe(topic_filter)

        return unsubscribe

    def on_presence(self, listener: Callable[[Presence], None]) -> Callable[[], None]:
        first = not self._presence_listeners
        self._presence_listeners.append(listener)
        if first:
            self._client.subscribe(PRESENCE_FILTER, options=SubscribeOptions(qos=1))

        def remove() -> None:
            if listener in self._presence_listeners:
                self._presence_listeners.remove(listener)

        return remove

    def on_denied(self, listener: Callable[[Denied], None]) -> Callable[[], None]:
        # An external broker refuses a publish without telling other clients.
        return lambda: None

    # -- paho's thread -----------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("the MQTT broker %s refused this replica: %s", self._where, reason)
            self._connected.set()
            return
        self._refused = None
        with self._lock:
            filters = sorted({f for f, _h in self._handlers})
        # A clean session forgets subscriptions: make them again on every (re)connect.
        topics = [(f, SubscribeOptions(qos=1)) for f in filters]
        if self._presence_listeners:
            topics.append((PRESENCE_FILTER, SubscribeOptions(qos=1)))
        topics.append((MEMBERS_FILTER, SubscribeOptions(qos=1)))
        client.subscribe(topics)
        client.publish(self._member_topic, b'{"alive":true}', qos=1, retain=True)
        self._up = True
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._up = False
        log.warning("lost the MQTT broker %s (%s); reconnecting", self._where, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        loop = self._loop
        if loop is None:
            return
        topic, payload = message.topic, bytes(message.payload)
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            loop.call_soon_threadsafe(self._dispatch, topic, payload)

    # -- the event loop ----------------------------------------------------------------------------

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/" + PRESENCE):
            self._dispatch_presence(topic, payload)
            return
        if topic.startswith(MEMBERS):
            self._dispatch_member(topic[len(MEMBERS) :], payload)
            return
        if not self._mine(topic):
            return
        for topic_filter, handler in list(self._handlers):
            if filter_matches(topic_filter, topic):
                try:
                    handler(topic, payload)
                except Exception:
                    log.exception("a handler failed on a message to %s", topic)

    def _mine(self, topic: str) -> bool:
        node_id = _node_of(topic)
        if node_id is None:
            return True
        mine = self._owners.get(node_id)
        if mine is None:
            mine = self._owners[node_id] = owner(node_id, self.members) == self._member
        return mine

    def _dispatch_member(self, member: str, payload: bytes) -> None:
        if not member or member == self._member:
            return
        before = set(self._members)
        if payload:
            self._members.add(member)
        else:
            self._members.discard(member)
        if self._members != before:
            self._owners.clear()
            log.info("cloud replicas now: %s", ", ".join(sorted(self.members)))

    def _dispatch_presence(self, topic: str, payload: bytes) -> None:
        parsed = parse_presence(topic, payload)
        if parsed is None:
            if payload:  # an empty payload clears a retained message: not an event
                log.warning("ignored a malformed presence message on %s", topic)
            return
        node_id, online, session = parsed
        was_online, current = self._presence.get(node_id, (False, ""))
        if not online and session and current and session != current:
            return  # the will of an earlier session, after the next one came up
        self._presence[node_id] = (online, session)
        if online == was_online:
            return
        event = Presence(node_id, online, int(time.time() * 1000))
        for listener in list(self._presence_listeners):
            listener(event)

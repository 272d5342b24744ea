"""The node broker's core: ``HardenedBroker`` with devices, the agent and the spool.

What changes from the cloud broker's core (broker/core.py), each by an override:

* ``_identify``: identity from a device certificate, the node's own certificate (the agent) or a
  device's username and password (``auth``), against the configuration now; client ids are the
  device's name or the node id; refusals get CONNACK 2, 4 or 5 and are counted and rate-logged by
  ``broker.refusals`` like the cloud's;
* ``_on_client_publish`` and ``add_subscription``: the device ACL of ``acl`` (publish filters;
  subscriptions covered by an allowed filter; ``$`` topics for the agent alone). A refused
  PUBLISH is dropped (QoS 1 still acknowledged) and counted;
* a PUBLISH of a device or a local client matching a spool route is handed to the ``SpoolWriter``
  and its PUBACK (PUBREC) held by ``NodeHandler`` until the batch is committed, in the
  connection's order; the reader loop goes on reading meanwhile;
* ``apply``: a new configuration cuts the connections it no longer admits and re-checks the
  subscriptions of the rest; devices' persistent sessions queue at most ``maxQueuedPerSession``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from amqtt.session import Session

from broker.core import PRINCIPAL, HardenedBroker, _log_denied
from broker.events import DisconnectReason, EventKind
from broker.handler import FLOW, MAX_INFLIGHT, MAX_UNSENT_BYTES, FlowLimits, HardenedHandler
from broker.node.acl import NodePrincipal, NodeRole, may_publish, may_subscribe
from broker.node.auth import Authenticator, NodeRefusal, connack_code
from broker.node.config import DeviceConfig, NodeConfig
from broker.node.spool import SpoolWriter
from broker.stats import DropReason

__all__ = ["SPOOL_TOPIC", "NodeBroker", "NodeHandler"]

log = logging.getLogger(__name__)

SPOOL_TOPIC = "$baetyl/broker/spool"
LOCAL_DEVICE = "local"


# Acknowledgements a connection may have waiting for the spool before the broker stops reading
# from it. A client within MQTT's flow control waits for its PUBACKs long before (paho: 20 in
# flight by default); one that never waits would otherwise grow the pending batch faster than
# the disk commits it, without limit.
MAX_HELD = 10_000


class NodeHandler(HardenedHandler):
    """Holds acknowledgements of spooled messages until their batch is committed, in order."""

    _held: deque[tuple[int, bytes]] | None = None
    _paused = False
    spool_waiters: Any = None  # set by NodeBroker: ticket -> handlers waiting for it

    def _acknowledge(self, ack: bytes, ticket: object) -> None:
        held = self._held
        if ticket is None and not held:
            self.send_bytes(ack)
            return
        if held is None:
            held = self._held = deque()
        if ticket is None:  # behind a held one: PUBACKs keep the connection's order
            ticket = held[-1][0]
        assert isinstance(ticket, int)
        held.append((ticket, ack))
        self.spool_waiters.setdefault(ticket, set()).add(self)
        if len(held) > MAX_HELD and not self._paused:
            log.info(
                "%s: %d acknowledgements wait for the spool; not reading from it until they go",
                getattr(self.session, "client_id", "?"),
                len(held),
            )
            self._pause(True)

    def release(self, committed: int) -> None:
        held = self._held
        while held and held[0][0] <= committed:
            self.send_bytes(held.popleft()[1])
        if self._paused and (not held or len(held) <= MAX_HELD // 2):
            self._pause(False)

    def _pause(self, pause: bool) -> None:
        transport = self._transport()
        if transport is None or not isinstance(transport, asyncio.ReadTransport):
            return
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
        self._paused = pause

    def fail(self) -> None:
        """The spool could not commit: close, so the client sends its messages again."""
        if self._held:
            self._held.clear()
            self._cut_off("the spool could not commit its messages")


class NodeBroker(HardenedBroker):
    handler_base = NodeHandler

    def __init__(
        self,
        amqtt_config: dict[str, Any],
        *,
        config: NodeConfig,
        authenticator: Authenticator,
        spool: SpoolWriter,
        **kwargs: Any,
    ) -> None:
        super().__init__(amqtt_config, **kwargs)
        self.config = config
        self._auth = authenticator
        self.spool = spool
        self.spool_waiters: dict[int, set[NodeHandler]] = {}
        self._handler_class.spool_waiters = self.spool_waiters
        self.presence: dict[str, tuple[bool, float]] = {}
        self.changed = asyncio.Event()  # something the status file shows changed
        self.denied_publishes = 0

    # -- CONNECT -------------------------------------------------------------------------------

    async def _identify(
        self, listener: str, writer: Any, session: Session
    ) -> tuple[Any, Any, tuple[str, str] | None]:
        principal: NodePrincipal | None
        if listener in self._local_listeners:
            principal = NodePrincipal(NodeRole.LOCAL, LOCAL_DEVICE)
        else:
            verdict = await self._auth.identify(
                writer.get_ssl_info(), session.username, session.password
            )
            if verdict.refusal is not None:
                return None, None, verdict.refusal
            principal = verdict.principal
        assert principal is not None
        client_id = session.client_id or ""
        if principal.role is NodeRole.DEVICE and client_id != principal.name:
            why = f"client id {client_id!r} is not the device's name {principal.name!r}"
            return None, None, (NodeRefusal.CLIENT_ID, why)
        if principal.role is NodeRole.AGENT and client_id != self.config.node:
            why = f"client id {client_id!r} is not the node id {self.config.node!r}"
            return None, None, (NodeRefusal.CLIENT_ID, why)
        if principal.role is NodeRole.LOCAL and (
            client_id in self.config.devices or client_id == self.config.node
        ):
            why = f"a local client may not use the client id {client_id!r} of a device or the agent"
            return None, None, (NodeRefusal.CLIENT_ID, why)
        if session.will_flag and not self._may_publish(principal, session.will_topic or ""):
            why = f"{principal.name!r} may not publish its will to {session.will_topic!r}"
            return None, None, (NodeRefusal.WILL_TOPIC, why)
        return principal, None, None

    def _connack_code(self, reason: str) -> int:
        self.changed.set()  # called for each refusal, once counted: the status shows it
        return connack_code(reason)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[HardenedHandler, Session]:
        handler, session = await super()._initialize_client_session(
            reader, writer, remote_address, remote_port
        )
        self._set_flow(session)
        return handler, session

    def _set_flow(self, session: Session) -> None:
        principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
        if principal is not None and principal.role is NodeRole.DEVICE:
            # A device's persistent session queues at most maxQueuedPerSession while offline.
            session.attributes[FLOW] = FlowLimits(
                MAX_INFLIGHT, self.config.max_queued_per_session, MAX_UNSENT_BYTES
            )

    def _emit(self, kind: EventKind, session: Session, reason: DisconnectReason | None) -> None:
        super()._emit(kind, session, reason)
        principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
        if principal is None or principal.role is not NodeRole.DEVICE:
            return
        online = kind is EventKind.CONNECTED
        if not online:
            # A take-over's old connection ends after the new one started: still online.
            entry = self._sessions.get(session.client_id)
            if (
                entry is not None
                and entry[0].transitions.is_connected()
                and entry[0] is not session
            ):
                return
        self.presence[principal.name] = (online, time.time())
        self.changed.set()

    # -- ACL -------------------------------------------------------------------------------------

    def _device(self, principal: NodePrincipal) -> DeviceConfig | None:
        return (
            self.config.devices.get(principal.name) if principal.role is NodeRole.DEVICE else None
        )

    def _may_publish(self, principal: NodePrincipal, topic: str) -> bool:
        device = self._device(principal)
        if principal.role is NodeRole.DEVICE and device is None:
            return False
        return may_publish(principal, topic, device.publish if device else ())

    def _may_subscribe(self, principal: NodePrincipal, topic_filter: str) -> bool:
        device = self._device(principal)
        if principal.role is NodeRole.DEVICE and device is None:
            return False
        return may_subscribe(principal, topic_filter, device.subscribe if device else ())

    def _on_client_publish(  # type: ignore[override]
        self, session: Session, topic: str, data: bytes, qos: int, retain: bool
    ) -> int | None:
        principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
        over = self._budgets.topic_refusal(topic)
        if principal is None or over is not None or not self._may_publish(principal, topic):
            self.counters.drops[DropReason.DENIED] += 1
            self.denied_publishes += 1
            _log_denied(session, "publish" if over is None else f"publish ({over})", topic)
            return None
        self.counters.received += 1
        ticket = None
        if principal.role is not NodeRole.AGENT and self.spool.matches(topic):
            ticket = self.spool.add(topic, principal.name, qos, data)
        self._route(topic, data, qos, None)
        if retain:
            self._retain(topic, data, qos)
        return ticket

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
        if principal is None:
            return 0x80
        over = self._budgets.topic_refusal(topic_filter)
        if over is not None:
            _log_denied(session, f"subscription ({over})", topic_filter)
            return 0x80
        if not self._may_subscribe(principal, topic_filter):
            _log_denied(session, "subscription", topic_filter)
            return 0x80
        limit = self._budgets.max_subscriptions
        if principal.role is NodeRole.AGENT:
            limit = self._budgets.service_max_subscriptions
        if self._index.count(session.client_id) >= limit and not self._index.holds(
            session.client_id, topic_filter
        ):
            _log_denied(session, f"subscription (over the budget of {limit})", topic_filter)
            return 0x80
        qos = min(qos, 2)
        self._index.add(topic_filter, session.client_id, session, qos, None)
        return qos

    def _subscription_limit(self, session: Session) -> int:
        principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
        if principal is not None and principal.role is NodeRole.AGENT:
            return self._budgets.service_max_subscriptions
        return self._budgets.max_subscriptions

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # The ACL was decided at SUBSCRIBE (the filter is covered by an allowed one), and the
        # filter matching a retained topic is all a delivery needs; a node broker holds few.
        from broker.acl import filter_matches

        topic_filter, subscription_qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        for topic, retained in list(self._retained_messages.items()):
            if filter_matches(topic_filter, topic):
                retained_qos = retained.qos if retained.qos is not None else subscription_qos
                handler.deliver(
                    topic, bytes(retained.data), min(subscription_qos, retained_qos), retain=True
                )

    # -- the spool -------------------------------------------------------------------------------

    def committed(self, ticket: int, last_id: int | None, error: BaseException | None) -> None:
        """A batch is on disk (or failed): release its acknowledgements; on the event loop."""
        for waiting in sorted(t for t in self.spool_waiters if t <= ticket):
            for handler in self.spool_waiters.pop(waiting):
                if error is None:
                    handler.release(ticket)
                else:
                    handler.fail()
        if last_id is not None:
            self._route(SPOOL_TOPIC, json.dumps({"last": last_id}).encode(), 0)
        self.changed.set()

    async def drop_expired(self) -> None:
        """Close the connections whose certificate has expired since their handshake."""
        now = datetime.now(UTC)
        for client_id, (session, _handler) in list(self._sessions.items()):
            principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
            if (
                principal is not None
                and principal.not_after is not None
                and principal.not_after <= now
                and session.transitions.is_connected()
            ):
                log.warning("disconnecting %s: its certificate expired", client_id)
                await self.disconnect_client(client_id, DisconnectReason.EXPIRED)

    # -- configuration ---------------------------------------------------------------------------

    async def apply(self, config: NodeConfig) -> None:
        """Take a new configuration: cut who it no longer admits, re-check the others' ACL."""
        self.config = config
        cut: list[tuple[str, str]] = []
        for client_id, (session, _handler) in list(self._sessions.items()):
            principal: NodePrincipal | None = session.attributes.get(PRINCIPAL)
            if principal is None or principal.role is not NodeRole.DEVICE:
                continue
            self._set_flow(session)
            device = config.devices.get(principal.name)
            why = None
            if device is None:
                why = "the device was removed"
            elif principal.serial is not None and principal.serial not in device.certificates:
                why = f"its certificate {principal.serial} is no longer listed"
            elif principal.serial is None and device.password_hash != principal.password_hash:
                why = "its password was changed or removed"
            if device is None or why is not None:
                cut.append((client_id, why or "the device was removed"))
                continue
            for topic_filter in list(self._index.filters_of(client_id)):
                if not may_subscribe(principal, topic_filter, device.subscribe):
                    self._index.remove(topic_filter, client_id)
                    log.warning(
                        "%s: subscription %r no longer allowed, removed", client_id, topic_filter
                    )
        for client_id, why in cut:
            session = self._sessions[client_id][0]
            if session.transitions.is_connected():
                log.warning("disconnecting %s: %s", client_id, why)
                await self.disconnect_client(client_id, DisconnectReason.REVOKED)
            else:
                await self._delete_session(client_id)
        for name in list(self.presence):
            if name not in config.devices:
                del self.presence[name]
        self.changed.set()

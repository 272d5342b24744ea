"""The cloud link: the node's one persistent mTLS session to the cloud's broker.

A paho client (MQTT 3.1.1, persistent session, the node id as client id) with the node's
certificate; its network thread hands everything to the event loop: messages into ``receive``,
connects and losses to the owner's ``on_online``/``on_offline``, called on the loop. After every
connect the link subscribes to the node's downstream topics and says the node is online (a
retained presence message); each connection leaves its own Last Will (offline), with a session
id that lets cloud replicas on an external broker ignore a will arriving after the next
connection came up. Reconnects back off with jitter, so a fleet does not stampede.

The link also carries the node's data plane (issue 15): it subscribes to the
node's downlink (``$baetyl/node/<id>/down/#``) and hands each message on it to ``on_downlink``
with a function that acknowledges it. The client runs with paho's manual acknowledgement: the
shadow's messages are acknowledged as they are received (as paho would), a downlink message only
once the data plane delivered it, so a message an agent crash interrupted comes again. The owner's
``on_client`` gets the connected client (for a publisher of uplink messages), and None when the
connection is lost; ``on_new_client`` each client as it is made, before it connects.

``reconnect`` replaces the client with one built from the certificate now on disk and the
keepalive in effect (a renewal, a new ``baetyl.keepalive``). Leaving the ``async with`` says
offline, disconnects and stops paho's thread; the agent exits promptly even when the cloud
stopped answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.certfile import serial_of
from edge.errors import EdgeError
from shadow import PRESENCE, Channel, Encoding, JSONObject, downlink, encode, parse_data, topic

__all__ = ["PRESENCE_TIMEOUT", "SUBSCRIBE", "CloudLink", "NodeIdentity"]

log = logging.getLogger(__name__)

SUBSCRIBE = (
    Channel.DESIRE,
    Channel.DESIRE_REJECTED,
    Channel.DELTA,
    Channel.REPORT_ACCEPTED,
    Channel.REPORT_REJECTED,
    Channel.RESOURCE,
    Channel.RESOURCE_REJECTED,
)
PRESENCE_TIMEOUT = 2.0
"""Seconds a stopping agent waits for the broker to take its offline presence."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What activation stored: the node id, its certificate and key, the CA, the broker."""

    node_id: str
    host: str
    port: int
    cert: Path
    key: Path
    ca: Path
    activation: str = ""  # this activation's id; another one means the node was activated again

    @classmethod
    def load(cls, state_dir: Path) -> NodeIdentity:
        path = state_dir / "node.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                node_id=str(info["nodeId"]),
                host=str(info["broker"]["host"]),
                port=int(info["broker"]["port"]),
                cert=state_dir / "node.crt",
                key=state_dir / "node.key",
                ca=state_dir / "ca.crt",
                activation=str(info.get("activationId") or info.get("activatedAt") or ""),
            )
        except FileNotFoundError:
            raise EdgeError(
                f"{state_dir} holds no activated node; run the install command "
                "('baetyl edge activate ...') first."
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise EdgeError(f"{path} is damaged ({exc}); activate the node again.") from None


class CloudLink:
    """The session to the cloud; ``async with`` it to connect (see the module docstring)."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        backoff: tuple[float, float],
        keepalive: Callable[[], int],
        on_online: Callable[[], None],
        on_offline: Callable[[], None],
        on_client: Callable[[mqtt.Client | None], None] | None = None,
        on_downlink: Callable[[str, bytes, Callable[[], None]], None] | None = None,
        on_new_client: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        self.identity = identity
        self._on_client = on_client
        self._on_new_client = on_new_client
        self._on_downlink = on_downlink
        self.connected = asyncio.Event()
        self._backoff = backoff
        self._keepalive_in_effect = keepalive
        self._on_online = on_online
        self._on_offline = on_offline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.serial = 0  # of the certificate the current client connects with
        self.keepalive = keepalive()  # the one the current client connects with
        self._client = self._make_client()

    # -- the session's life ------------------------------------------------------------------------

    async def __aenter__(self) -> CloudLink:
        self._loop = asyncio.get_running_loop()
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Say offline (a clean DISCONNECT sends no will), disconnect, stop paho's thread.

        In this order: paho's thread, stopped while connected, runs until every QoS 1 message
        is acknowledged, so a cloud that stopped answering (a half-open connection) would hold
        the agent's exit past any grace period. A report still in flight is saved as waiting.
        """
        if self.connected.is_set():
            offline = self._presence(online=False, session=self._client.user_data_get())
            info = self._client.publish(self._presence_topic, offline, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, PRESENCE_TIMEOUT)
        self._client.disconnect()
        self._client.loop_stop()
        self._loop = None

    @property
    def connecting(self) -> bool:
        """Whether the link was entered: connected, or trying to be."""
        return self._loop is not None

    def _start(self) -> None:
        self.keepalive = self._keepalive_in_effect()
        self._client.connect_async(self.identity.host, self.identity.port, self.keepalive)
        self._client.loop_start()

    def reconnect(self, why: str) -> None:
        """Replace the client with one using the certificate now on disk and the keepalive in
        effect; a certificate and key that do not load keep the current one (logged)."""
        try:  # before the old one is dropped: a key and certificate that do not load keep it
            client = self._make_client()
        except (ssl.SSLError, OSError) as exc:
            log.warning("cannot load the renewed certificate and key (%s); keeping the current "
                        "session and trying again at the next renewal check", exc)  # fmt: skip
            return
        log.info("reconnecting %s", why)
        old, self._client = self._client, client
        old.disconnect()
        old.loop_stop()
        self.connected.clear()
        self._on_offline()
        if self._on_client is not None:
            self._on_client(None)
        self._start()

    # -- messages ----------------------------------------------------------------------------------

    async def receive(self) -> tuple[str, bytes]:
        """The next message: its topic and payload."""
        return await self._inbox.get()

    def publish(self, channel: Channel, body: JSONObject) -> None:
        """Send ``body`` on the node's ``channel`` (QoS 1; paho queues it while offline)."""
        self._client.publish(topic(self.identity.node_id, channel), encode(body, Encoding.JSON), 1)

    # -- paho (its thread hands everything to the event loop) --------------------------------------

    def _make_client(self) -> mqtt.Client:
        identity = self.identity
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=identity.node_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,  # a downlink message is acknowledged once delivered
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self.serial = serial_of(identity.cert)
        client.tls_set_context(context)
        first, largest = self._backoff
        # Jitter: each node starts its backoff somewhere in [first, 2*first).
        client.reconnect_delay_set(min_delay=max(1, round(first * (1 + random.random()))),  # noqa: S311
                                   max_delay=max(1, int(largest)))  # fmt: skip
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._new_session(client)
        if self._on_new_client is not None:  # before it connects: paho settings that need it
            self._on_new_client(client)
        return client

    @property
    def _presence_topic(self) -> str:
        return f"$baetyl/node/{self.identity.node_id}/{PRESENCE}"

    @staticmethod
    def _presence(*, online: bool, session: Any) -> bytes:
        return json.dumps({"online": online, "session": session}).encode()

    def _new_session(self, client: mqtt.Client) -> None:
        """A new presence session for the next connection, and its Last Will (offline)."""
        session = uuid.uuid4().hex[:16]
        # Kept with its client (paho's user data): a replaced client's callbacks, which may still
        # run on its thread, can never change the session of the one that replaced it.
        client.user_data_set(session)
        offline = self._presence(online=False, session=session)
        client.will_set(self._presence_topic, offline, qos=1, retain=True)

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self._client:
            return  # a client a renewal replaced
        if reason.is_failure:
            log.warning("the cloud refused the connection: %s", reason)
            return
        node_id = self.identity.node_id
        filters = [(topic(node_id, channel), 1) for channel in SUBSCRIBE]
        client.subscribe([*filters, (downlink(node_id), 1)])
        online = self._presence(online=True, session=client.user_data_get())
        client.publish(self._presence_topic, online, qos=1, retain=True)

        def up() -> None:
            self.connected.set()
            self._on_online()
            if self._on_client is not None:
                self._on_client(client)

        self._call(up)
        log.info("connected to %s:%d as %s", self.identity.host, self.identity.port,
                 self.identity.node_id)  # fmt: skip

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self._client:
            return  # the client a renewal replaced: its session and will are not ours any more
        self._new_session(client)  # the next connection leaves its own will

        def lost() -> None:
            self.connected.clear()
            self._on_offline()
            if self._on_client is not None:
                self._on_client(None)

        self._call(lost)
        log.info("%s; apps keep running", _disconnect_cause(reason))

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        data = parse_data(message.topic)
        if data is not None and data[0] == self.identity.node_id and data[1] == "down":
            handler = self._on_downlink
            if handler is None:
                client.ack(message.mid, message.qos)  # nothing on this node takes it
                return
            rest, payload, mid, qos = data[2], bytes(message.payload), message.mid, message.qos

            def ack() -> None:
                client.ack(mid, qos)  # on the session it came with; a later one has it again

            self._call(lambda: handler(rest, payload, ack))
            return
        client.ack(message.mid, message.qos)  # the shadow's messages: taken as received
        item = (message.topic, bytes(message.payload))
        self._call(lambda: self._inbox.put_nowait(item))


def _disconnect_cause(reason: Any) -> str:
    """paho's reason for a disconnect, in words.

    Over MQTT 3.1.1 a broker cannot say why it closes a connection: paho reports a closed
    socket as "Unspecified error", whether the cloud stopped cleanly or the network failed.
    """
    match str(reason):
        case "Success":  # our own disconnect: stopping, or a renewal's new session
            return "disconnected from the cloud"
        case "Unspecified error":
            return (
                "the connection to the cloud closed (the cloud stopped or the network failed), "
                "reconnecting"
            )
        case "Keep alive timeout":
            return "the cloud stopped answering within the keepalive, reconnecting"
        case other:
            return f"disconnected from the cloud ({other}), reconnecting"

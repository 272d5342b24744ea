"""The embedded broker as one component: start, serve, reload, stop.

::

    async with EmbeddedBroker(settings, tls_files) as broker:
        broker.add_listener(on_event)          # connection events
        await broker.publish("$baetyl/node/acme.gw-1/desire", payload, qos=1)
        await broker.reload()                  # or just rewrite the files: they are watched

With ``sessions=<path>``, the persistent sessions and retained messages are saved there on a
graceful stop and restored at the next start, before the listeners accept (see ``snapshot``).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from amqtt.errors import BrokerError as AmqttBrokerError

from broker.core import HardenedBroker, LocalHandler, PeerCertificate, peer_of
from broker.errors import BrokerError, BrokerStartError
from broker.events import ConnectionListener, DeniedListener, DisconnectReason, Listeners
from broker.handler import REASON
from broker.settings import BrokerSettings, TLSFiles
from broker.snapshot import Snapshot, load_snapshot, rewrite, write_snapshot
from broker.stats import BrokerStats
from broker.tls import ReloadableTLS

__all__ = ["EmbeddedBroker"]

log = logging.getLogger(__name__)

MQTTS, WSS, LOCAL = "mqtts", "wss", "local"
EXPIRY_SWEEP_INTERVAL = 5.0


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# amqtt/broker.py's warning when _initialize_client_session raises (amqtt 0.12.1).
CONNECT_FAILED = "Failed to initialize client session"


class _StartFailureReported(logging.LoggerAdapter[logging.Logger]):
    """amqtt's broker logger, but a failed start is left to :class:`EmbeddedBroker` to report.

    amqtt logs "Broker startup failed" with a traceback before it raises; the caller turns the
    error into one sentence saying what to do (a port in use), so the traceback goes to DEBUG.
    So does its warning for each refused CONNECT, which the broker logs at a bounded rate.
    """

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        # Logged by amqtt for every connection whose CONNECT the broker refused, unthrottled: a
        # scan or a retry loop flooded the log. HardenedBroker counts and logs those refusals
        # itself, at a bounded rate (broker.refusals).
        if isinstance(msg, str) and msg.startswith(CONNECT_FAILED):
            self.debug(msg, *args, **kwargs)
            return
        super().warning(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        if msg == "Broker startup failed":
            kwargs.setdefault("exc_info", True)
            self.debug(msg, *args, **kwargs)
            return
        super().exception(msg, *args, **kwargs)


class EmbeddedBroker:
    """amqtt, hardened, with its TLS files watched for rotation and revocation."""

    def __init__(
        self, settings: BrokerSettings, tls: TLSFiles, *, sessions: Path | None = None
    ) -> None:
        self.settings = settings
        self.tls_files = tls
        self.sessions_file = sessions
        self._events = Listeners()
        self._tls: ReloadableTLS | None = None
        self._broker: HardenedBroker | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._last_reload_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # asyncio has no per-server knob for this; the class attribute is read when each TLS
        # connection is made, so it applies to every TLS connection this process opens from now.
        asyncio.sslproto.SSLProtocol.max_size = self.settings.tls_read_buffer
        self._tls = tls = ReloadableTLS(self.tls_files)
        restored = None
        if self.sessions_file is not None:
            restored = await asyncio.to_thread(self._load, self.sessions_file)
        listeners: dict[str, Any] = {
            # amqtt requires a "default" listener and copies its fields into the others; an
            # unbound one keeps the real listeners exactly as written here.
            "default": {"type": "tcp", "bind": None},
            MQTTS: {
                "type": "tcp",
                "bind": _bind(self.settings.host, self.settings.port),
                "ssl": True,
            },
        }
        if self.settings.ws_port is not None:
            listeners[WSS] = {
                "type": "ws",
                "bind": _bind(self.settings.host, self.settings.ws_port),
                "ssl": True,
            }
        if self.settings.plain_port is not None:
            # Plaintext is for local tools only: always loopback, never $ topics (see acl.py).
            listeners[LOCAL] = {"type": "tcp", "bind": _bind("127.0.0.1", self.settings.plain_port)}
        try:
            self._broker = HardenedBroker(
                {"listeners": listeners, "plugins": {}, "timeout_disconnect_delay": 0},
                tls_context=self._tls.front,
                local_listeners=frozenset({LOCAL}),
                connect_timeout=self.settings.connect_timeout,
                max_packet_size=self.settings.max_packet_size,
                max_connections=self.settings.max_connections,
                events=self._events,
                budgets=self.settings.budgets,
                refusal_log_interval=self.settings.refusal_log_interval,
                handshakes_per_source=self.settings.handshakes_per_source,
                revoked=lambda: tls.revoked,
                restored=restored,
            )
            self._broker.logger = _StartFailureReported(self._broker.logger, {})
            await self._broker.start()
        except BaseException as exc:
            if restored is not None and self.sessions_file is not None:
                rewrite(self.sessions_file, restored, restoring=True)  # not served: kept whole
            if isinstance(exc, AmqttBrokerError):
                raise BrokerStartError(
                    f"The broker cannot open its listeners: {exc.__cause__ or exc}. "
                    "Choose other ports with --set broker.port=... or stop what uses them."
                ) from None
            raise
        self._watcher = asyncio.create_task(self._watch(), name="broker-tls-watcher")
        log.info("broker listening on %s", self.ports)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._broker is not None:
            await self._broker.stop_serving()
            if self.sessions_file is not None:
                await self._save(self._broker, self.sessions_file)
            for session, _ in self._broker._sessions.values():
                session.attributes.setdefault(REASON, DisconnectReason.SHUTDOWN)
            await self._broker.shutdown()
            self._broker = None

    @staticmethod
    def _load(path: Path) -> Snapshot | None:
        snapshot = load_snapshot(path)
        if snapshot is not None:  # served from now on: see snapshot's docstring
            rewrite(path, snapshot.without_messages())
        return snapshot

    @staticmethod
    async def _save(broker: HardenedBroker, path: Path) -> None:
        """Write the persistent sessions and retained messages; a failure is logged, not raised:
        the stop goes on (what was not saved is lost, and the log says so)."""
        try:
            snapshot = broker.snapshot()
            size = await asyncio.to_thread(write_snapshot, path, snapshot)
        except OSError as exc:
            log.error(
                "could not save the broker's persistent sessions to %s (%s): their subscriptions "
                "and queued messages are lost with this stop; check the directory's space and "
                "permissions",
                path,
                exc.strerror or exc,
            )
        except Exception:
            log.exception("could not save the broker's persistent sessions to %s", path)
        else:
            log.info(
                "saved %d persistent sessions (%d messages held for them) and %d retained "
                "messages to %s (%d bytes)",
                len(snapshot.sessions),
                snapshot.messages,
                len(snapshot.retained),
                path,
                size,
            )

    @property
    def _core(self) -> HardenedBroker:
        if self._broker is None:
            raise BrokerError("The broker is not running; use it inside 'async with'.")
        return self._broker

    # -- what other components use ----------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        """The bound port of each listener (useful with port 0)."""
        out: dict[str, int] = {}
        for name, server in self._core._servers.items():
            instance = server.instance
            sockets = getattr(instance, "sockets", None) or []
            if sockets:
                out[name] = int(sockets[0].getsockname()[1])
        return out

    def add_listener(self, listener: ConnectionListener) -> Callable[[], None]:
        """Call ``listener`` on every connect and disconnect; returns a function that removes it."""
        return self._events.add(listener)

    def add_denied_listener(self, listener: DeniedListener) -> Callable[[], None]:
        """Call ``listener`` whenever a client's publish is refused by the ACL."""
        return self._events.add_denied(listener)

    def subscribe(self, topic_filter: str, callback: LocalHandler) -> Callable[[], None]:
        """Receive, in process, every message matching ``topic_filter`` (see ``subscribe_local``).

        ``callback(topic, payload, sender)`` runs synchronously while the message is routed;
        ``sender`` is the publisher's verified principal (None for the cloud's own publishes).
        Returns a function that removes the subscription.
        """
        return self._core.subscribe_local(topic_filter, callback)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Publish as the cloud itself, synchronously (routing never waits; see ``publish``)."""
        self._core._route(topic, payload, qos)

    def stats(self) -> BrokerStats:
        """Counters and gauges now: connections by role, messages, drops, refusals, queues."""
        return self._core.stats()

    def connected(self) -> list[str]:
        """Client ids of the connected clients."""
        return self._core.sessions_where(lambda _session: True)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish as the cloud itself (no ACL applies)."""
        if retain:
            await self._core.retain_message(None, topic, payload, qos)
        await self._core.internal_message_broadcast(topic, payload, qos)

    async def disconnect(
        self, client_id: str, reason: DisconnectReason = DisconnectReason.KICKED
    ) -> bool:
        """Close a client's connection now; returns whether it was connected."""
        return await self._core.disconnect_client(client_id, reason)

    async def reload(self) -> None:
        """Re-read the server certificate, CA and CRL now, and drop revoked sessions."""
        if self._tls is None:
            raise BrokerError("The broker is not running; use it inside 'async with'.")
        self._tls.reload()
        await self._drop_revoked()

    # -- the watcher ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        next_expiry_sweep = loop.time() + EXPIRY_SWEEP_INTERVAL
        while True:
            await asyncio.sleep(self.settings.crl_poll_interval)
            self._core.refusals.flush()
            if self._tls.changed():
                try:
                    self._tls.reload()
                except BrokerError as exc:
                    # A half-written file is retried at the next poll; say so once per cause.
                    if str(exc) != self._last_reload_error:
                        log.error("%s Keeping the previous TLS files.", exc)
                        self._last_reload_error = str(exc)
                else:
                    self._last_reload_error = None
                    await self._drop_revoked()
            if loop.time() >= next_expiry_sweep:
                next_expiry_sweep = loop.time() + EXPIRY_SWEEP_INTERVAL
                await self._drop_expired()

    async def _drop_revoked(self) -> None:
        assert self._tls is not None
        revoked = self._tls.revoked
        await self._drop_where(lambda peer: peer.serial in revoked, DisconnectReason.REVOKED)

    async def _drop_expired(self) -> None:
        now = datetime.now(UTC)
        await self._drop_where(lambda peer: peer.not_after <= now, DisconnectReason.EXPIRED)

    async def _drop_where(
        self, condition: Callable[[PeerCertificate], bool], reason: DisconnectReason
    ) -> None:
        """Disconnect every client whose verified certificate meets ``condition``."""

        def matches(session: Any) -> bool:
            peer = peer_of(session)
            return peer is not None and condition(peer)

        for client_id in self._core.sessions_where(matches):
            log.warning("disconnecting %s: its certificate is %s", client_id, reason)
            await self._core.disconnect_client(client_id, reason)

"""The node broker process: start the listeners, follow the configuration, stop on SIGTERM.

The configuration file is re-read when its inode, mtime or size changes (polled every 0.5 s) and
on SIGHUP; a configuration that does not load keeps the previous one (logged once per cause).
TLS files are re-read the same way. SIGTERM and SIGINT close the sessions, commit what the
spool holds, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from amqtt.errors import BrokerError as AmqttBrokerError

from broker.embedded import _bind, _StartFailureReported
from broker.errors import BrokerError, BrokerStartError
from broker.events import DisconnectReason, Listeners
from broker.handler import REASON
from broker.node.auth import Authenticator
from broker.node.config import NodeConfig, stamp
from broker.node.core import NodeBroker
from broker.node.spool import SpoolWriter
from broker.node.status import render, write_atomically
from broker.node.tls import NodeTLS
from broker.settings import BrokerSettings

__all__ = ["POLL_INTERVAL", "NodeBrokerServer"]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.5
STATUS_INTERVAL = 0.5
EXPIRY_SWEEP_INTERVAL = 5.0  # as the cloud broker's (broker/embedded.py)
MQTTS, LOCAL = "mqtts", "local"


class NodeBrokerServer:
    def __init__(self, config_path: Path, config: NodeConfig) -> None:
        self.config_path = config_path
        self.config = config
        self._stamp = stamp(config_path)
        self._last_error: str | None = None
        self._reload = asyncio.Event()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        config = self.config
        settings = BrokerSettings()
        tls = NodeTLS(config.tls)
        auth = Authenticator(config, tls.device_ca, tls.cloud_ca)
        broker: NodeBroker | None = None

        def on_commit(ticket: int, last: int | None, error: BaseException | None) -> None:
            if broker is not None:
                loop.call_soon_threadsafe(broker.committed, ticket, last, error)

        spool = SpoolWriter(
            config.spool.path,
            routes=config.spool.routes,
            max_bytes=config.spool.max_bytes,
            max_age=config.spool.max_age_seconds,
            on_commit=on_commit,
        )
        listeners: dict[str, Any] = {
            "default": {"type": "tcp", "bind": None},
            MQTTS: {"type": "tcp", "bind": _bind(*config.listen), "ssl": True},
        }
        if config.local is not None:
            listeners[LOCAL] = {"type": "tcp", "bind": _bind(*config.local)}
        broker = NodeBroker(
            {"listeners": listeners, "plugins": {}, "timeout_disconnect_delay": 0},
            config=config,
            authenticator=auth,
            spool=spool,
            tls_context=tls.front,
            local_listeners=frozenset({LOCAL}),
            connect_timeout=settings.connect_timeout,
            max_packet_size=settings.max_packet_size,
            max_connections=settings.max_connections,
            events=Listeners(),
            budgets=settings.budgets,
            refusal_log_interval=settings.refusal_log_interval,
        )
        broker.logger = _StartFailureReported(broker.logger, {})
        try:
            try:
                await broker.start()
            except AmqttBrokerError as exc:
                raise BrokerStartError(
                    f"The node broker cannot open its listeners: {exc.__cause__ or exc}. "
                    "Choose other ports (--node-broker-port) or stop what uses them."
                ) from None
            log.info("node broker for %s listening on %s", config.node, self._ports(broker))
            broker.changed.set()
            tasks = [
                asyncio.create_task(self._watch(broker, tls, auth, spool)),
                asyncio.create_task(self._status(broker, spool)),
            ]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for session, _ in broker._sessions.values():
                session.attributes.setdefault(REASON, DisconnectReason.SHUTDOWN)
            await broker.shutdown()
        finally:
            await asyncio.to_thread(spool.stop)
        self._write_status(broker, spool)
        log.info("node broker stopped")

    @staticmethod
    def _ports(broker: NodeBroker) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, server in broker._servers.items():
            sockets = getattr(server.instance, "sockets", None) or []
            if sockets:
                out[name] = int(sockets[0].getsockname()[1])
        return out

    async def _watch(
        self, broker: NodeBroker, tls: NodeTLS, auth: Authenticator, spool: SpoolWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        next_expiry_sweep = loop.time() + EXPIRY_SWEEP_INTERVAL
        while True:
            await _wait_set(self._reload, POLL_INTERVAL)
            if loop.time() >= next_expiry_sweep:
                next_expiry_sweep = loop.time() + EXPIRY_SWEEP_INTERVAL
                await broker.drop_expired()
            forced = self._reload.is_set()
            self._reload.clear()
            broker.refusals.flush()
            now = stamp(self.config_path)
            if forced or now != self._stamp:
                self._stamp = now
                try:
                    config = NodeConfig.load(self.config_path)
                except BrokerError as exc:
                    self._report(str(exc), "Keeping the previous configuration.")
                    continue
                if config.listen != self.config.listen or config.local != self.config.local:
                    log.warning("listener addresses changed: they apply at the next start")
                if config.spool.path != self.config.spool.path:
                    log.warning("the spool path changed: it applies at the next start")
                self.config = config
                self._last_error = None
                spool.configure(
                    config.spool.routes, config.spool.max_bytes, config.spool.max_age_seconds
                )
                auth.update(config, tls.device_ca, tls.cloud_ca)
                await broker.apply(config)
                log.info("configuration reloaded: %d devices", len(config.devices))
            if tls.changed(self.config.tls) or forced:
                try:
                    tls.reload(self.config.tls)
                except BrokerError as exc:
                    self._report(str(exc), "Keeping the previous TLS files.")
                else:
                    auth.update(self.config, tls.device_ca, tls.cloud_ca)

    def _report(self, error: str, keeping: str) -> None:
        if error != self._last_error:
            log.error("%s %s", error, keeping)
            self._last_error = error

    async def _status(self, broker: NodeBroker, spool: SpoolWriter) -> None:
        written_refusals = -1
        while True:
            # Refused TLS handshakes set no event (they happen before the node broker hears of
            # the connection): their count is looked at every second.
            await _wait_set(broker.changed, 1.0)
            if not broker.changed.is_set() and broker.refusals.total == written_refusals:
                continue
            broker.changed.clear()
            written_refusals = broker.refusals.total
            try:
                self._write_status(broker, spool)
            except OSError as exc:
                self._report(f"Cannot write the status file {self.config.status}: {exc}.", "")
            await asyncio.sleep(STATUS_INTERVAL)  # at most one write per interval

    def _write_status(self, broker: NodeBroker | None, spool: SpoolWriter) -> None:
        if broker is None:
            return
        write_atomically(
            self.config.status,
            render(
                self.config.devices,
                broker.presence,
                spool.rows,
                spool.bytes,
                broker.refusals.counts,
            ),
        )


async def _wait_set(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` passed. Not ``asyncio.wait_for``: before Python
    3.12 it swallows a cancellation that arrives once the event is set (a commit just before
    SIGTERM), and the task would go on, so the broker never exits."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()

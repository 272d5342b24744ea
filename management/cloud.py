"""The whole cloud in one process: broker, store, shadow service, management API, activation.

With ``bus.mode = "external"`` there is no embedded broker: this process is one replica of the
cloud, a privileged MQTT 5 client of an external broker cluster, sharing the store (MySQL) and
the node requests with the other replicas.

::

    async with Cloud(settings, ca, tls_files) as cloud:
        cloud.ports        # {"mqtts": 8883, "api": 9004, "activation": 9003, ...}

Startup order: store (migrated), broker, shadow service, the API's keys, then the HTTP servers;
shutdown is the reverse, so no request reaches a component that is already gone. Once the API
serves, the nodes' desired state is reconciled with the stored resources in the background (a
push cut short by a crash is finished; API writes wait for it on the matcher's lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
from types import TracebackType
from typing import Self

from aiohttp import web

from broker import EmbeddedBroker, TLSFiles
from certs import CertificateAuthority, Identity
from management.api import ApiContext, create_activation_app, create_app
from management.bootstrap import CLOUD_SERVICE_NAME, ensure_device_ca, ensure_service_cert
from management.config import BusMode, ConfigError, Settings
from management.crypto import SecretBox
from management.matching import Matcher, NodeResources
from management.metrics import metrics_registry
from management.store import ResourceStore, all_migrations
from management.tokens import TokenSigner
from shadow import StoreError
from shadow.server import Bus, Database, EmbeddedBus, MqttBus, ShadowService, SqlShadowStore

__all__ = ["Cloud"]

log = logging.getLogger(__name__)


def _server_context(files: TLSFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    # Asked for, not required: /v1/activate is anonymous, /v1/renew needs the node's certificate.
    # A certificate presented must verify against our CA (else the handshake fails); revocation
    # is checked by the route itself, against the CA's registry.
    context.load_verify_locations(cafile=files.ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class Cloud:
    """Every cloud component, started and stopped together."""

    def __init__(self, settings: Settings, ca: CertificateAuthority, files: TLSFiles) -> None:
        self.settings = settings
        self.ca = ca
        self.files = files
        self._stack = contextlib.AsyncExitStack()
        self._ports: dict[str, int] = {}
        self.context: ApiContext | None = None
        self.broker: EmbeddedBroker | None = None
        self._reconciling: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        settings = self.settings
        stack = self._stack
        try:
            db = await stack.enter_async_context(
                Database.open(settings.database_url, migrations=all_migrations())
            )
            external = settings.bus.mode is BusMode.EXTERNAL
            bus: Bus
            if external:
                bus = await stack.enter_async_context(self._external_bus())
                mqtt_host, mqtt_port = settings.bus.node_address
            else:
                broker = await stack.enter_async_context(
                    EmbeddedBroker(
                        settings.broker, self.files, sessions=settings.broker_sessions_file
                    )
                )
                self.broker = broker
                self._ports.update(broker.ports)
                bus = EmbeddedBus(broker)
                mqtt_host, mqtt_port = "", self._ports["mqtts"]
            store = ResourceStore(db)
            secrets = SecretBox.open_or_create(settings.keys_dir / "secrets.key")
            signer = TokenSigner.open_or_create(settings.keys_dir / "activation.key")
            shadow = await stack.enter_async_context(
                ShadowService(
                    bus,
                    SqlShadowStore(db),
                    settings.shadow,
                    resources=NodeResources(store, secrets),
                    shared_store=external,
                )
            )
            matcher = Matcher(store, shadow)
            self.context = ApiContext(
                store=store,
                shadow=shadow,
                matcher=matcher,
                secrets=secrets,
                signer=signer,
                ca=self.ca,
                public_host=settings.api.public_host,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                activation_port=settings.api.activation_port,
                install_token_ttl=settings.api.install_token_ttl,
                node_cert_days=settings.pki.node_cert_days,
                metrics=metrics_registry(self.broker, shadow),
                device_ca=ensure_device_ca(settings),
            )
            self._ports["activation"] = await self._serve(
                create_activation_app(self.context),
                settings.api.activation_host,
                settings.api.activation_port,
                _server_context(self.files),
                key="api.activation_port",
            )
            # The install commands name the port the activation endpoint really got.
            self.context = dataclasses.replace(
                self.context, activation_port=self._ports["activation"]
            )
            self._ports["api"] = await self._serve(
                create_app(self.context), settings.api.host, settings.api.port, None, key="api.port"
            )
            # Not before serving: at a restart the whole fleet reconnects at once, and each of
            # the reconciliation's queries waited behind that storm of TLS handshakes (the API
            # came up 5-12 s after a SIGKILL at 5,000 nodes instead of 1-2 s).
            self._reconciling = asyncio.create_task(self._reconcile(matcher))
            stack.push_async_callback(self._stop_reconciling)
        except BaseException:
            await stack.aclose()
            raise
        return self

    @staticmethod
    async def _reconcile(matcher: Matcher) -> None:
        try:
            moved = await matcher.reconcile()
        except StoreError as exc:  # the API's next write to those nodes pushes them anyway
            log.error("could not reconcile desired state with the resources: %s", exc)
            return
        except Exception:
            log.exception("reconciling desired state with the resources failed")
            return
        if moved:
            log.info("reconciled the desired state of %d nodes with their resources", moved)

    async def _stop_reconciling(self) -> None:
        if self._reconciling is not None:
            self._reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciling

    async def reconciled(self) -> None:
        """Wait until the start-up reconciliation of desired state is done."""
        if self._reconciling is not None:
            await asyncio.shield(self._reconciling)

    def _external_bus(self) -> MqttBus:
        """This replica as a privileged client of the external broker (service certificate)."""
        settings = self.settings.bus
        cert, key = ensure_service_cert(self.settings, self.ca)
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file or str(self.files.ca)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        host, port = settings.broker_address
        suffix = settings.client_id or f"{socket.gethostname()}-{os.getpid()}"
        return MqttBus(
            host=host,
            port=port,
            client_id=f"{Identity.service(CLOUD_SERVICE_NAME).common_name}/{suffix}",
            member=suffix,
            tls=context,
            keepalive=settings.keepalive,
        )

    async def _serve(
        self, app: web.Application, host: str, port: int, tls: ssl.SSLContext | None, *, key: str
    ) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:  # a port in use, or an address this host does not have
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConfigError(
                f"The cloud cannot listen on {host}:{port} ({reason}); choose another port "
                f"with --set {key}=..., or stop what uses it."
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @property
    def ports(self) -> dict[str, int]:
        """The bound port of each listener (useful with port 0)."""
        return dict(self._ports)

"""The agent's data plane: the node broker it runs, the routes it carries, what it reports.

The agent's collaborator for everything of the data plane (the agent keeps its loop, dispatch
and reconciliation):

- at each reconciliation (:meth:`DataPlane.reconcile`) it reads the desired ``devices`` and
  ``routes`` refs, takes their specs from the spec book (or says which to ask for), writes the
  node broker's ``config.json`` and hands back the system app ``baetyl-broker`` when the broker
  should run (``edge.dataplane.nodebroker``) and has its certificate. While a device or route
  spec is missing, the last complete set stays in force;
- every turn of the agent's loop (:meth:`DataPlane.step`) it keeps the broker's certificate
  (``edge.dataplane.brokercert``), the agent's local MQTT client to the node broker, and queues
  the ``routes``/``devices`` report sections when they changed, at most every
  :data:`REPORT_EVERY` seconds;
- the router (``edge.dataplane.router``) runs in a task of its own; the local client hands it a
  ``PahoPublisher`` and wakes it on ``$baetyl/broker/spool``; the cloud link hands it a
  ``PahoPublisher`` over its own client while connected, and the messages of the node's
  downlink, acknowledged to the cloud only once the router returns (paho's manual ack), in
  the order they came.

The local client: paho over TLS to ``127.0.0.1:<port>`` with the node's own certificate (the
broker takes it as the agent), verifying the broker with ``device-ca.crt`` and its
``127.0.0.1`` SAN; client id the node id; clean session (what it needs is in the spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.dataplane.brokercert import BrokerCertificate
from edge.dataplane.nodebroker import (
    NodeBrokerFiles,
    NodeBrokerSettings,
    broker_config,
    broker_wanted,
    desired_refs,
    system_app,
)
from edge.dataplane.publisher import PahoPublisher, prepare_client
from edge.dataplane.router import Router
from edge.dataplane.routes import RouteSpec
from edge.engines import AppSpec
from edge.errors import EdgeError
from edge.link import NodeIdentity
from edge.specbook import SpecBook, SpecRef
from shadow import JSONObject, ResourceKind

__all__ = ["REPORT_EVERY", "SPOOL_TOPIC", "DataPlane"]

log = logging.getLogger(__name__)

REPORT_EVERY: Final = 2.0
"""Seconds between two reports of the ``routes``/``devices`` sections, at most."""
SPOOL_TOPIC: Final = "$baetyl/broker/spool"
STOP_TIMEOUT: Final = 5.0

Ack = Callable[[], None]


class DataPlane:
    """See the module docstring; ``async with`` it (the agent does), then call its methods
    from the agent's loop."""

    def __init__(
        self,
        state_dir: Path,
        identity: NodeIdentity,
        settings: NodeBrokerSettings,
        *,
        engine: str,
        function_url: str | None,
        report: Callable[[JSONObject], None],
    ) -> None:
        self.settings = settings
        self.files = NodeBrokerFiles(state_dir)
        self._state_dir = state_dir
        self._identity = identity
        self._engine = engine
        self.function_url = function_url  # set by the CLI once the proxy listens
        self._report = report
        self.certificate = BrokerCertificate(state_dir, self.files, settings.hosts)
        self.wanted = False
        self.error: str | None = None  # why the broker cannot run (its certificate's aside)
        self._devices: list[Mapping[str, Any]] | None = None  # the last complete set
        self._routes: list[Mapping[str, Any]] | None = None
        self._app: AppSpec | None = None  # what reconcile handed to the engine last
        self._router: Router | None = None
        self._router_task: asyncio.Task[None] | None = None
        self._local: mqtt.Client | None = None
        self._cloud: mqtt.Client | None = None
        # One publisher per paho client: it takes the client's on_publish and chains its
        # on_disconnect once; a client connecting again keeps it.
        self._publishers: dict[int, tuple[mqtt.Client, PahoPublisher]] = {}
        self._downlinks: asyncio.Queue[tuple[str, bytes, Ack]] = asyncio.Queue()
        # Set once the routes are known (a complete set, or no data plane wanted): a downlink
        # message waits for it unacknowledged rather than be dropped for want of its route.
        self._routes_known = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: dict[str, Any] = {}
        self._next_report = 0.0

    # -- life --------------------------------------------------------------------------------------

    async def __aenter__(self) -> DataPlane:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._downlink_loop(), name="dataplane-downlink"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The router first, while its publishers still work: it saves its cursors. A task
        # that does not end within a few seconds is left (logged): the agent must exit.
        tasks = [t for t in (self._router_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                log.warning("%s did not stop within %.0f s; leaving it", task.get_name(),
                            STOP_TIMEOUT)  # fmt: skip
        self._stop_local()
        self._loop = None

    # -- reconcile ---------------------------------------------------------------------------------

    @staticmethod
    def refs(desired: Mapping[str, Any]) -> list[SpecRef]:
        """The device and route specs the desired document names (the book keeps them)."""
        devices, routes = desired_refs(desired)
        return [SpecRef(ResourceKind.DEVICE, n, v) for n, v in devices] + [
            SpecRef(ResourceKind.ROUTE, n, v) for n, v in routes
        ]

    def reconcile(
        self, desired: Mapping[str, Any], book: SpecBook
    ) -> tuple[list[AppSpec], list[SpecRef]]:
        """The system apps to run beside the user apps, and the specs still to ask for."""
        self.wanted = broker_wanted(self.settings.mode, desired)
        refs = self.refs(desired)
        specs = {ref: book.get(ref) for ref in refs}
        missing = [ref for ref, spec in specs.items() if spec is None]
        if not missing:
            self._devices = [s for r, s in specs.items() if s and r.kind is ResourceKind.DEVICE]
            self._routes = [s for r, s in specs.items() if s and r.kind is ResourceKind.ROUTE]
        elif self._devices is not None:
            # A device gone from the desired document is cut now, not once the other specs of
            # the change came: its deletion needs no spec.
            bound = {ref.name for ref in refs if ref.kind is ResourceKind.DEVICE}
            self._devices = [d for d in self._devices if d.get("name") in bound]
        if not self.wanted or self._routes is not None:
            self._routes_known.set()
        if not self.wanted:
            self._app = None
            self._stop_local()
            if self._router is not None:
                self._router.set_routes([])  # their cursors go; the engine stops the broker
            return [], missing
        # No complete set since the agent started (a desired document saved before its specs
        # came, then a restart): the broker's config and the router keep what they have. An
        # empty set would cut every device (deleting its session) and have the router delete
        # the routes' cursors and every spooled row while the specs are being fetched.
        complete = self._devices is not None and self._routes is not None
        if not complete and not self.files.config.exists():
            return [], missing  # nothing to run on yet
        devices, routes = self._devices or [], self._routes or []
        self._ensure_router()
        if self._router is not None and complete:
            parsed: list[RouteSpec] = []
            for route in routes:
                try:
                    parsed.append(RouteSpec.parse(route))
                except (ValueError, EdgeError) as exc:
                    log.warning("the route %r cannot run on this node: %s", route.get("name"), exc)
            self._router.set_routes(parsed)
        config = broker_config(
            node_id=self._identity.node_id, settings=self.settings, devices=devices, routes=routes
        )
        try:
            self.files.ensure()
            if complete and self.files.write_config(config):
                log.info("the node broker's config names %d devices and %d routes",
                         len(devices), len(routes))  # fmt: skip
            app = system_app(self.files, self.settings, engine=self._engine)
        except EdgeError as exc:
            log.warning("the node broker cannot run: %s", exc)
            self.error = str(exc)
            return [], missing
        self.error = None
        # Without its certificate the broker could not start: it waits for one (step).
        self._app = app if self.certificate.present else None
        return ([self._app] if self._app else []), missing

    # -- the loop's turn ---------------------------------------------------------------------------

    async def step(self, now: float) -> bool:
        """Keep the certificate, the local client and the reports; whether the system apps
        changed (then the agent reconciles)."""
        changed = False
        if self.wanted:
            if await self.certificate.ensure(now):
                self.files.touch_config()  # the running broker re-reads its certificate
                self._stop_local()  # a new device CA may verify the broker now
                changed = self._app is None
            if self._app is not None and self._local is None and self.certificate.present:
                self._start_local()
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY
            self._queue_report()
        return changed

    def _queue_report(self) -> None:
        if not self.wanted and not self._reported:
            return  # a node without a data plane reports none of its sections
        sections: dict[str, Any] = {"routes": {}, "devices": {}}
        if self._router is not None and self.wanted:
            sections["routes"] = self._router.stats()
        status = self.files.read_status() if self.wanted else None
        if status is not None and isinstance(status.get("devices"), dict):
            sections["devices"] = {
                str(name): {"online": bool(d.get("online")), "since": d.get("since")}
                for name, d in status["devices"].items()
                if isinstance(d, dict)
            }
        if self.wanted or self._reported:
            error = self.error or self.certificate.error
            sections["nodebroker"] = {"enabled": self.wanted, "error": error}
        patch: JSONObject = {}
        for key, value in sections.items():
            before = self._reported.get(key)
            if value == before:
                continue
            if isinstance(value, dict) and isinstance(before, dict):
                # A merge patch: what is gone is reported as null, so it goes from the shadow.
                diff = {k: v for k, v in value.items() if before.get(k) != v}
                diff.update({k: None for k in before if k not in value})
                patch[key] = diff
            else:
                patch[key] = value
        if patch:
            self._reported = {k: v for k, v in sections.items()}
            self._report(patch)

    # -- the router --------------------------------------------------------------------------------

    def _ensure_router(self) -> None:
        if self._router is not None or self._loop is None:
            return
        node_name = self._identity.node_id.partition(".")[2] or self._identity.node_id
        self.files.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._router = Router(
            node_id=self._identity.node_id,
            node_name=node_name,
            spool_path=self.files.spool,
            function_url=self.function_url,
        )
        if self._cloud is not None:
            self._router.set_cloud(self._publisher(self._cloud))
        self._router_task = self._loop.create_task(
            self._run_router(self._router), name="dataplane-router"
        )

    @staticmethod
    async def _run_router(router: Router) -> None:
        while True:
            try:
                await router.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one turn must not stop the routes for good
                log.exception("the router failed; starting it again in a second")
                await asyncio.sleep(1.0)

    def _publisher(self, client: mqtt.Client) -> PahoPublisher | None:
        """The publisher over ``client``, made with it before it connected (a publisher sets
        paho's in-flight window, which paho refuses on an established connection)."""
        kept = self._publishers.get(id(client))
        return kept[1] if kept is not None and kept[0] is client else None

    def _made(self, client: mqtt.Client) -> None:
        """Make the publisher over a new ``client``, on the loop, before it connects; it takes
        the client's ``on_publish`` and chains its ``on_disconnect``."""
        live = {id(c) for c in (self._cloud, self._local) if c is not None}
        self._publishers = {k: v for k, v in self._publishers.items() if k in live}
        # Paho's own window (20 by default) capped a route at 20 messages per round trip and
        # walked paho's whole queue (the router's window, 2,000) at every acknowledgement:
        # measured, the cloud received half what the node acknowledged (bench/dataplane.py).
        prepare_client(client)
        try:
            self._publishers[id(client)] = (client, PahoPublisher(client))
        except RuntimeError as exc:  # no event loop running: the agent always has one
            log.warning("no publisher over the new MQTT client (%s); routes wait", exc)

    # -- the cloud link's hooks (called on the loop) -----------------------------------------------

    def cloud_client_made(self, client: mqtt.Client) -> None:
        """The link made a new client (at start, at a reconnect): its publisher, now."""
        self._made(client)

    def cloud_connected(self, client: mqtt.Client | None) -> None:
        """The link connected with ``client``, or (None) lost its connection."""
        self._cloud = client
        if self._router is not None:
            self._router.set_cloud(self._publisher(client) if client is not None else None)

    def downlink(self, rest: str, payload: bytes, ack: Ack) -> None:
        """A message on the node's ``down/<rest>``; ``ack`` it once the router took it."""
        self._downlinks.put_nowait((rest, payload, ack))

    async def _downlink_loop(self) -> None:
        while True:
            rest, payload, ack = await self._downlinks.get()
            await self._routes_known.wait()
            router = self._router
            try:
                if router is not None:
                    await router.downlink(rest, payload)
            except Exception as exc:  # not acknowledged: the cloud sends it again on reconnect
                log.warning("a downlink message on down/%s was not delivered: %s", rest, exc)
                continue
            ack()

    # -- the local client --------------------------------------------------------------------------

    def _start_local(self) -> None:
        identity = self._identity
        try:
            context = ssl.create_default_context(cafile=str(self.files.device_ca))
            context.load_cert_chain(str(identity.cert), str(identity.key))
        except (ssl.SSLError, OSError) as exc:
            log.warning("cannot connect to the node broker: its CA or the node's certificate "
                        "does not load (%s)", exc)  # fmt: skip
            return
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=identity.node_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(context)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_local_connect
        client.on_disconnect = self._on_local_disconnect
        client.on_message = self._on_local_message
        self._local = client
        self._made(client)
        client.connect_async("127.0.0.1", self.settings.port, keepalive=30)
        client.loop_start()

    def _stop_local(self) -> None:
        client, self._local = self._local, None
        if client is None:
            return
        if self._router is not None:
            self._router.set_local(None)
        client.disconnect()
        client.loop_stop()

    def _call(self, client: mqtt.Client, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and client is self._local:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn)

    def _on_local_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any
    ) -> None:
        if reason.is_failure:
            log.warning("the node broker refused the agent's connection: %s", reason)
            return
        client.subscribe(SPOOL_TOPIC, qos=0)

        def up() -> None:
            if self._router is not None and client is self._local:
                self._router.set_local(self._publisher(client))
                self._router.wake()  # what was spooled while disconnected

        self._call(client, up)

    def _on_local_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        def down() -> None:
            if self._router is not None:
                self._router.set_local(None)

        self._call(client, down)

    def _on_local_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == SPOOL_TOPIC and self._router is not None:
            self._call(client, self._router.wake)

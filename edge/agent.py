"""The edge agent: the cloud's desired state applied on the node, what runs reported.

After every (re)connect the agent asks for the full desired document (``desire/get``) and
reconciles: it takes the app, config, secret, certificate and registry specs it lacks by
(kind, name, version) from the cloud (``edge.specbook``), hands the complete set to its engine,
and reports what runs (``edge.reporter``).
The engine gets the set again every ``resync_interval`` although nothing changed: what could not
start is tried again, and what drifted (a Kubernetes object deleted by hand) is put back.
A spec whose answer does not come (refused 500, lost with a session or a cloud restart) is asked
for again, at once after a reconnect or a restart and otherwise with a jittered back-off.
Desire messages at or below the applied version are ignored (QoS 1 redelivery, a get crossing
a push). While offline the apps keep running and reports coalesce (latest wins); a
``desire/get`` unanswered or refused is sent again (``edge.desireget``).

The agent's collaborators, each with one job:

- ``edge.link.CloudLink``: the mTLS session (paho), presence and will, reconnection;
- ``edge.agentstate.AgentState``: what survives a restart, in ``<state-dir>/agent.json`` (0600),
  secret values (secret data, registry passwords, certificate keys) in clear: a node restarting
  offline must still run its apps, and the native engine writes the same values into volume
  files anyway. File modes are their only protection;
- ``edge.specbook.SpecBook``: the specs held and asked for, apps assembled from them;
- ``edge.desireget.DesireGet``: the outstanding ``desire/get`` and when to ask again;
- ``edge.renewer.Renewer``: the certificate renewed before it expires, the session moved to it;
- ``edge.reporter.StatusReporter``: the engine's statuses and the node's, reported;
- ``edge.properties.NodeProperties``: the node's properties; a new ``baetyl.keepalive`` among
  them makes the link reconnect with it;
- ``edge.dataplane.plane.DataPlane``: the node broker (a system app, ``baetyl-broker``, handed
  to the engine beside the user apps), its certificate, the routes, and their reports.

The agent keeps the loop, the dispatch of what comes down, and the reconciliation. It is an
async context manager: entering connects (and re-applies what the state file says was applied),
leaving says offline, disconnects and keeps the unsent reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from edge.agentstate import AgentState
from edge.certfile import DEFAULT_THRESHOLD
from edge.dataplane.nodebroker import BROKER_APP, NodeBrokerSettings
from edge.dataplane.plane import DataPlane
from edge.desireget import DesireGet
from edge.engines import AppSpec, Engine
from edge.errors import EdgeError
from edge.link import CloudLink, NodeIdentity
from edge.properties import KEEPALIVE_RANGE, NodeProperties
from edge.renewer import Renewer
from edge.reporter import StatusReporter
from edge.reports import ReportQueue, ReportSettings
from edge.specbook import SpecRef
from shadow import (
    Channel,
    DesiredFollower,
    JSONObject,
    RequestError,
    decode,
    get_message,
    parse,
    parse_desire,
    parse_rejected,
    parse_resource,
    resource_get_message,
)

__all__ = ["Agent", "AgentConfig", "NodeIdentity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path
    report_interval: float = 20.0  # a full report at least this often (jittered)
    resync_interval: float = 60.0  # the desired apps applied again this often, changed or not
    backoff: tuple[float, float] = (1.0, 60.0)  # reconnect delay: first, largest
    keepalive: int = 30
    renew_interval: float = 3600.0  # how often to check whether the certificate is due
    renew_threshold: float = DEFAULT_THRESHOLD  # renew with less than this part of its life left
    node_broker: NodeBrokerSettings = field(default_factory=NodeBrokerSettings)
    engine_kind: str = "native"  # native or kube: how the node broker runs
    function_url: str | None = None  # the function proxy, for routes that call a function

    def __post_init__(self) -> None:
        if not self.resync_interval > 0:
            raise EdgeError(f"resync_interval must be positive, not {self.resync_interval}.")
        if not self.renew_interval > 0:
            raise EdgeError(f"renew_interval must be positive, not {self.renew_interval}.")
        if not 0.0 <= self.renew_threshold <= 1.0:
            raise EdgeError(f"renew_threshold must be between 0 and 1, not {self.renew_threshold}.")
        low, high = KEEPALIVE_RANGE
        if type(self.keepalive) is not int or not low <= self.keepalive <= high:
            raise EdgeError(f"keepalive must be a whole number of seconds from {low} to {high}, "
                            f"not {self.keepalive!r}.")  # fmt: skip


class Agent:
    """``async with`` it, then ``run`` until ``stop`` is set; see the module docstring."""

    def __init__(self, config: AgentConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.identity = NodeIdentity.load(config.state_dir)
        self.state = AgentState(config.state_dir / "agent.json", self.identity.activation)
        settings = ReportSettings(heartbeat=config.report_interval)
        reports_file = config.state_dir / "reports.json"
        if self.state.load():
            queue = ReportQueue.load(reports_file, settings)
        else:  # they were for the earlier activation: another node id, maybe another cloud
            queue = ReportQueue(settings)
            reports_file.unlink(missing_ok=True)
        # The node's properties: the agent's own applied (the keepalive), the apps' kept.
        self.properties = NodeProperties(
            config.state_dir / "properties.json",
            activation=self.identity.activation,
            default_keepalive=config.keepalive,
            report=queue.put,
        )
        self.properties.desire(self.state.desired.get("nodeprops"))
        self.renewer = Renewer(config.state_dir, interval=config.renew_interval,
                               threshold=config.renew_threshold)  # fmt: skip
        self.dataplane = DataPlane(
            config.state_dir,
            self.identity,
            config.node_broker,
            engine=config.engine_kind,
            function_url=config.function_url,
            report=queue.put,
        )
        self.link = CloudLink(
            self.identity,
            backoff=config.backoff,
            keepalive=lambda: self.properties.keepalive,
            on_online=self._online,
            on_offline=queue.on_disconnect,
            on_client=self.dataplane.cloud_connected,
            on_downlink=self.dataplane.downlink,
            on_new_client=self.dataplane.cloud_client_made,
        )
        self.reporter = StatusReporter(engine, queue, self.properties, self.link, reports_file)
        self._get = DesireGet()
        self._incomplete = False  # the desired apps wait for specs: ask again until they come
        self._next_resync = 0.0  # monotonic; when to apply the desired apps again, unchanged
        self._attempted: list[tuple[str, str]] | None = None  # what the last apply was given
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Agent:
        async with contextlib.AsyncExitStack() as stack:
            # Left in reverse: the link closed first, so a report still in flight is kept as
            # waiting, and goes out after the restart.
            stack.callback(self.reporter.save)
            await stack.enter_async_context(self.link)
            # Left before the link: the routes stop (their cursors saved) while it is still up.
            await stack.enter_async_context(self.dataplane)
            if self.state.desired:
                await self._reconcile()  # what was applied before the restart, from local state
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle what comes down, reconcile and report until ``stop`` is set."""
        if not self.link.connecting:
            raise RuntimeError("enter the agent ('async with agent:') before running it")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                name, payload = await asyncio.wait_for(self.link.receive(), timeout=0.5)
                await self._handle(name, payload)
            try:
                await self._step()
            except Exception:  # one failure (a bug, a full disk) must not end the agent
                log.exception("the agent's loop failed; going on in a second")
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        """What the loop does between messages: ask again, resync, report, renew."""
        online = self.link.connected.is_set()
        if online and self._get.due(time.monotonic()):
            self._ask_desired()
        if self.state.desired and time.monotonic() >= self._next_resync:
            self._next_resync = time.monotonic() + self.config.resync_interval
            await self._reconcile(resync=True)  # retries what failed, restores what drifted
        elif self._incomplete and online:
            await self._reconcile()  # asks again for specs whose answer never came
        if await self.dataplane.step(time.monotonic()):
            await self._reconcile(resync=True)  # the node broker can start: its certificate came
        await self.reporter.step(time.monotonic())
        await self.renewer.check(time.monotonic(), self.link)

    def _online(self) -> None:
        """Connected: an answer may have been lost with the last session (or the cloud
        restarted before sending it), so what is still missing is asked for at once."""
        self.state.specs.forget_requests()
        self._get.reset()
        self._ask_desired()

    def _ask_desired(self) -> None:
        request = self._get.ask(self.state.follower.version, time.monotonic())
        self.link.publish(Channel.DESIRE_GET, get_message(request))

    # -- dispatch ----------------------------------------------------------------------------------

    async def _handle(self, name: str, payload: bytes) -> None:
        try:
            parsed = parse(name)
            if parsed is None or parsed[0] != self.identity.node_id:
                raise ValueError("not one of this node's topics")
            body, _ = decode(payload, max_bytes=1 << 20)
            await self._dispatch(parsed[1], body)
        except (ValueError, RequestError) as exc:
            log.warning("ignored a malformed message on %s: %s", name, exc)
        except Exception:  # handling one message must not end the agent
            log.exception("handling a message on %s failed", name)

    async def _dispatch(self, channel: Channel, body: JSONObject) -> None:
        state = self.state
        if channel is Channel.DESIRE:
            desire = parse_desire(body)
            asked_at = self._get.answered(desire)
            if asked_at is not None and desire.version < asked_at:
                # The answer to our own request is older than what we had before asking: the
                # cloud's shadows went back (a database restored from a backup). The cloud's
                # versions only grow, so no true answer is older: follow it.
                log.warning("the cloud's desired state went back from version %d to %d (its "
                            "store restored?); following it", asked_at, desire.version)  # fmt: skip
                state.follower = DesiredFollower(desire.version - 1)
            if state.follower.offer(desire):
                state.desired = desire.desired
                state.save()
                self._apply_properties()
                await self._reconcile()
        elif channel is Channel.RESOURCE:
            resource = parse_resource(body)
            state.specs.put(SpecRef(resource.kind, resource.name, resource.version), resource.spec)
            state.save()
            await self._reconcile()
        elif channel is Channel.REPORT_ACCEPTED:
            self.reporter.queue.accepted(str(body.get("clientToken", "")))
        elif channel in (
            Channel.REPORT_REJECTED,
            Channel.RESOURCE_REJECTED,
            Channel.DESIRE_REJECTED,
        ):
            rejected = parse_rejected(body)
            if channel is Channel.REPORT_REJECTED:
                self.reporter.queue.rejected(rejected.client_token or "", rejected.code)
            elif channel is Channel.RESOURCE_REJECTED and rejected.code == 404:
                # A spec at that version is gone: our desired state is stale; ask again.
                self._ask_desired()
            elif channel is Channel.DESIRE_REJECTED:
                self._get.refused(time.monotonic())  # busy (429), the store away (500)
            log.info("%s refused: %s %s", channel, rejected.code, rejected.message)

    def _apply_properties(self) -> None:
        """Hand the desired properties over; a new keepalive takes a new connection (MQTT sets
        it at CONNECT), so the broker's half-open bound follows it. The report of the value in
        effect, queued now, goes out over that connection."""
        self.properties.desire(self.state.desired.get("nodeprops"))
        if self.properties.keepalive != self.link.keepalive:
            self.link.reconnect(f"with a keepalive of {self.properties.keepalive} s")

    # -- reconcile ---------------------------------------------------------------------------------

    async def _reconcile(self, *, resync: bool = False) -> None:
        """Apply the desired apps whose specs are all here; ask for the specs that are not.

        An app waiting for a spec keeps running at the version applied before (its specs are
        kept), and one never applied waits; the other apps go on. Nothing is applied while
        waiting if that would change nothing, unless ``resync``; nor when the agent does not
        know what it applied (a first start with specs missing: the engine runs what it adopted).
        """
        state, book = self.state, self.state.specs
        refs = [
            (str(a.get("name")), str(a.get("version")))
            for a in state.desired.get("apps", []) or []
            if isinstance(a, dict)
        ]
        if any(name == BROKER_APP for name, _ in refs):
            log.warning("ignored the desired app %r: the name is the node broker's (a system app "
                        "of the agent); rename the app", BROKER_APP)  # fmt: skip
            refs = [ref for ref in refs if ref[0] != BROKER_APP]
        previous = dict(state.applied or [])
        missing: list[SpecRef] = []
        apps: list[AppSpec] = []
        chosen: list[tuple[str, str]] = []
        for name, version in refs:
            app, lacking = book.app(name, version)
            if app is None:
                missing.extend(lacking)
                old = previous.get(name)
                kept = None if old is None or old == version else book.app(name, old)[0]
                if kept is not None:
                    apps.append(kept)
                    chosen.append((kept.name, kept.version))
                continue
            apps.append(app)
            chosen.append((name, version))
        system, lacking = self.dataplane.reconcile(state.desired, book)
        missing.extend(lacking)
        apps.extend(system)
        chosen.extend((app.name, app.version) for app in system)
        self._incomplete = bool(missing)
        if missing:
            if self.link.connected.is_set():
                for ref in book.to_ask(missing, time.monotonic()):
                    request = ref.request(f"res-{uuid.uuid4().hex[:12]}")
                    self.link.publish(Channel.RESOURCE_GET, resource_get_message(request))
            tried = chosen in (state.applied, self._attempted)  # done, or failed: until resync
            if state.applied is None or (tried and not resync):
                return
        else:
            book.forget_requests()
        self._next_resync = time.monotonic() + self.config.resync_interval
        self._attempted = chosen
        try:
            await self.engine.apply(apps)
        except EdgeError as exc:  # the Kubernetes API away, say: the apps that run keep running
            log.warning("the engine could not apply the desired apps; trying again in %.0f s: %s",
                        self.config.resync_interval, exc)  # fmt: skip
            return
        state.applied = chosen
        book.prune(chosen + [ref for ref in refs if ref not in chosen],
                   also=self.dataplane.refs(state.desired))  # fmt: skip
        state.save()

"""The edge agent: one mTLS session to the cloud, desired state applied, reports sent.

After every (re)connect the agent subscribes to its own downstream topics, asks for the full
desired document (``desire/get``) and reconciles: it fetches the app, config, secret,
certificate and registry specs it lacks by (kind, name, version) (``edge.engines.references``:
what each app uses), hands the complete set to its engine, and reports what runs.
The engine gets the set again every ``resync_interval`` although nothing changed: what could not
start is tried again, and what drifted (a Kubernetes object deleted by hand) is put back.
A spec whose answer does not come (refused 500, lost with a session or a cloud restart) is asked
for again, at once after a reconnect or a restart and otherwise with a jittered back-off.
Desire messages at or below the applied version are ignored (QoS 1 redelivery, a get crossing
a push). While offline the apps keep running, reports coalesce (latest wins) and go out when
the session is back; reconnects back off with jitter so a fleet does not stampede. A
``desire/get`` unanswered for 30 s, or refused (429, 500), is sent again.

What the agent knows survives a restart in ``<state-dir>/agent.json`` (0600): the desired
document and version, and every spec fetched, secret values (secret data, registry passwords,
certificate keys) in clear: a node restarting offline must still run its apps, and the native
engine writes the same values into volume files anyway. File modes are their only protection.

The certificate is renewed before it expires (``edge.renewal``), checked at start and every
``renew_interval``: once the new one is in place (renewed here or by ``baetyl edge renew``) the
MQTT client is rebuilt with it and reconnects, the apps untouched; connected again, the agent
has the cloud retire the old certificate. Those checks read the certificate without
``cryptography`` (``edge.certfile``); ``edge.renewal``, and ``cryptography`` with it, is loaded
only when there is a renewal to do or a replaced certificate to retire, so an agent at rest does
not hold it.

The node's properties (``edge.properties``) get the desired ``nodeprops`` with every desired
document; a new ``baetyl.keepalive`` among them makes the agent reconnect with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.certfile import (
    DEFAULT_THRESHOLD,
    NEW_CERT_FILE,
    PREVIOUS_CERT_FILE,
    read_certificate,
    renewal_due,
)
from edge.engines import AppSpec, Engine, references
from edge.errors import EdgeError
from edge.node import node_info, node_stats
from edge.properties import KEEPALIVE_RANGE, NodeProperties
from edge.reports import ReportQueue, ReportSettings
from shadow import (
    PRESENCE,
    Channel,
    DesiredFollower,
    Encoding,
    JSONObject,
    RequestError,
    decode,
    encode,
    parse_desire,
    parse_rejected,
    parse_resource,
    topic,
)

__all__ = ["Agent", "AgentConfig", "NodeIdentity"]

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


ANSWER_TIMEOUT = 30.0
"""Seconds without an answer after which a ``desire/get`` is sent again: the first wait, then
doubling to 8 times as long, each jittered by up to half again (a fleet that reconnected
together does not ask again together)."""
PRESENCE_TIMEOUT = 2.0
"""Seconds a stopping agent waits for the broker to take its offline presence."""


@dataclass(slots=True)
class _Get:
    """The outstanding ``desire/get``."""

    token: str
    version: int  # the desired version the agent had when it asked
    attempts: int  # how many were sent since the last answer
    resend_at: float  # monotonic


@dataclass(frozen=True, slots=True)
class AgentConfig:
    state_dir: Path
    report_interval: float = 20.0  # a full report at least this often (jittered)
    resync_interval: float = 60.0  # the desired apps applied again this often, changed or not
    backoff: tuple[float, float] = (1.0, 60.0)  # reconnect delay: first, largest
    keepalive: int = 30
    renew_interval: float = 3600.0  # how often to check whether the certificate is due
    renew_threshold: float = DEFAULT_THRESHOLD  # renew with less than this part of its life left

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
    """Runs until ``stop`` is set; see the module docstring."""

    def __init__(self, config: AgentConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.identity = NodeIdentity.load(config.state_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._follower = DesiredFollower()
        self._desired: JSONObject = {}
        self._specs: dict[str, Any] = {}  # "<kind>/<name>/<version>" -> spec
        # spec key -> (attempts, monotonic time before which it is not asked for again)
        self._requested: dict[str, tuple[int, float]] = {}
        self._incomplete = False  # the desired apps wait for specs: ask again until they come
        self._next_resync = 0.0  # monotonic; when to apply the desired apps again, unchanged
        self._get: _Get | None = None  # the desire/get awaiting its answer
        # What the engine was last given, by (name, version); None: not known (an agent.json
        # from before it was kept), so nothing is applied while specs are missing.
        self._applied: list[tuple[str, str]] | None = None
        self._attempted: list[tuple[str, str]] | None = None  # what the last apply was given
        self._last_status: list[dict[str, Any]] | None = None
        settings = ReportSettings(heartbeat=config.report_interval)
        if self._load_state():
            self._reports = ReportQueue.load(self._reports_file, settings)
        else:  # they were for the earlier activation: another node id, maybe another cloud
            self._reports = ReportQueue(settings)
            self._reports_file.unlink(missing_ok=True)
        # The node's properties: the agent's own applied (the keepalive), the apps' kept.
        self.properties = NodeProperties(
            config.state_dir / "properties.json",
            activation=self.identity.activation,
            default_keepalive=config.keepalive,
            report=self._reports.put,
        )
        self.properties.desire(self._desired.get("nodeprops"))
        self._keepalive = self.properties.keepalive  # the one the current client connects with
        if (config.state_dir / NEW_CERT_FILE).exists():
            from edge.renewal import finish_interrupted_renewal

            finish_interrupted_renewal(config.state_dir)
        self._next_renewal_check = 0.0  # monotonic; 0: at start
        self._retire_due = True  # a certificate renewed before a restart may await retiring
        self._client_serial = 0
        self._client = self._make_client()

    # -- local state -------------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.config.state_dir / "agent.json"

    @property
    def _reports_file(self) -> Path:
        return self.config.state_dir / "reports.json"

    def _load_state(self) -> bool:
        """Load what the agent kept; False if it belongs to an earlier activation.

        A node activated again (as another node, or of a cloud whose shadows started over)
        must not keep the desired version it had: it would ignore every desired state up to it.
        """
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._applied = []  # a new node: nothing applied yet
            return True
        except ValueError:
            log.warning("%s is damaged; starting from the cloud's state", self._state_file)
            return True
        kept = data.get("activation")
        if kept is not None and kept != self.identity.activation:
            log.info(
                "the node was activated again since %s was written: its desired state and "
                "unsent reports are dropped; starting from the cloud's",
                self._state_file,
            )
            self._applied = []  # what the engine runs for the earlier activation is not wanted
            return False
        self._follower = DesiredFollower(int(data.get("version", 0)))
        self._desired = dict(data.get("desired", {}))
        self._specs = dict(data.get("specs", {}))
        applied = data.get("applied")
        if isinstance(applied, list):
            self._applied = [(str(name), str(version)) for name, version in applied]
        return True

    def _save_state(self) -> None:
        """Keep what the agent knows in agent.json; a failure (a full disk) is logged, and the
        state kept in memory is written at the next change or resync."""
        try:
            self._write_state()
        except OSError as exc:
            log.warning("could not save the agent's state in %s: %s", self._state_file, exc)

    def _write_state(self) -> None:
        data = {
            "activation": self.identity.activation,
            "version": self._follower.version,
            "desired": self._desired,
            "specs": self._specs,
            "applied": self._applied,
        }
        temp = self._state_file.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self._state_file)

    # -- MQTT (paho's thread hands everything to the event loop) -----------------------------------

    def _make_client(self) -> mqtt.Client:
        identity = self.identity
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=identity.node_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(identity.ca))
        context.load_cert_chain(str(identity.cert), str(identity.key))
        self._client_serial = _serial(identity.cert)
        client.tls_set_context(context)
        first, largest = self.config.backoff
        # Jitter: each node starts its backoff somewhere in [first, 2*first).
        client.reconnect_delay_set(min_delay=max(1, round(first * (1 + random.random()))),  # noqa: S311
                                   max_delay=max(1, int(largest)))  # fmt: skip
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        self._new_session(client)
        return client

    @property
    def _presence_topic(self) -> str:
        return f"$baetyl/node/{self.identity.node_id}/{PRESENCE}"

    def _new_session(self, client: mqtt.Client) -> None:
        """A new presence session for the next connection, and its Last Will (offline).

        Cloud replicas on an external broker learn presence from these retained messages; a
        session id lets them ignore a will that arrives after the next connection came up.
        """
        session = uuid.uuid4().hex[:16]
        # Kept with its client (paho's user data): a replaced client's callbacks, which may still
        # run on its thread, can never change the session of the one that replaced it.
        client.user_data_set(session)
        offline = json.dumps({"online": False, "session": session}).encode()
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
        prefix = f"$baetyl/node/{self.identity.node_id}/"
        client.subscribe([(prefix + channel.value, 1) for channel in SUBSCRIBE])
        online = json.dumps({"online": True, "session": client.user_data_get()}).encode()
        client.publish(self._presence_topic, online, qos=1, retain=True)
        self._call(self._online)
        log.info("connected to %s:%d as %s", self.identity.host, self.identity.port,
                 self.identity.node_id)  # fmt: skip

    def _online(self) -> None:
        self._connected.set()
        # An answer may have been lost with the last session (or the cloud restarted before
        # sending it): what is still missing is asked for at once over this one.
        self._requested.clear()
        self._get = None
        self._ask_desired()

    def _ask_desired(self) -> None:
        """Publish ``desire/get``; asked again if no answer comes (see ``_desired_get_due``)."""
        attempts = self._get.attempts if self._get is not None else 0
        token = f"get-{uuid.uuid4().hex[:12]}"
        now = time.monotonic()
        wait = ANSWER_TIMEOUT * min(2**attempts, 8) * (1.0 + random.random() / 2)  # noqa: S311
        self._get = _Get(token, self._follower.version, attempts + 1, now + wait)
        self._publish(Channel.DESIRE_GET, {"clientToken": token})

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if client is not self._client:
            return  # the client a renewal replaced: its session and will are not ours any more
        self._new_session(client)  # the next connection leaves its own will

        def lost() -> None:
            self._connected.clear()
            self._reports.on_disconnect()

        self._call(lost)
        log.info("%s; apps keep running", _disconnect_cause(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        item = (message.topic, bytes(message.payload))
        self._call(lambda: self._inbox.put_nowait(item))

    def _publish(self, channel: Channel, body: JSONObject) -> None:
        self._client.publish(topic(self.identity.node_id, channel), encode(body, Encoding.JSON), 1)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, reconcile and report until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._keepalive = self.properties.keepalive
        self._client.connect_async(self.identity.host, self.identity.port, self._keepalive)
        self._client.loop_start()
        try:
            if self._desired:
                await self._reconcile()  # what was applied before the restart, from local state
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    name, payload = await asyncio.wait_for(self._inbox.get(), timeout=0.5)
                    await self._handle(name, payload)
                try:
                    await self._step()
                except Exception:  # one failure (a bug, a full disk) must not end the agent
                    log.exception("the agent's loop failed; going on in a second")
                    await asyncio.sleep(1.0)
        finally:
            await self._close_session()
            try:
                self._reports.save(self._reports_file)  # what was not accepted goes out next time
            except OSError as exc:
                log.warning("could not keep the unsent reports in %s: %s", self._reports_file, exc)

    async def _close_session(self) -> None:
        """Say offline (a clean DISCONNECT sends no will), disconnect, stop paho's thread.

        In this order: paho's thread, stopped while connected, runs until every QoS 1 message
        is acknowledged, so a cloud that stopped answering (a half-open connection) would hold
        the agent's exit past any grace period. A report still in flight is saved as waiting.
        """
        if self._connected.is_set():
            session = self._client.user_data_get()
            offline = json.dumps({"online": False, "session": session}).encode()
            info = self._client.publish(self._presence_topic, offline, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, PRESENCE_TIMEOUT)
        self._client.disconnect()
        self._client.loop_stop()

    async def _step(self) -> None:
        """What the loop does between messages: ask again, resync, report, renew."""
        if self._desired_get_due():
            self._ask_desired()
        if self._desired and time.monotonic() >= self._next_resync:
            self._next_resync = time.monotonic() + self.config.resync_interval
            await self._reconcile(resync=True)  # retries what failed, restores what drifted
        elif self._incomplete and self._connected.is_set():
            await self._reconcile()  # asks again for specs whose answer never came
        await self._report_if_due()
        await self._renew_if_due()

    def _desired_get_due(self) -> bool:
        """Whether the outstanding ``desire/get`` went unanswered long enough to ask again."""
        return (
            self._get is not None
            and self._connected.is_set()
            and time.monotonic() >= self._get.resend_at
        )

    async def _handle(self, name: str, payload: bytes) -> None:
        try:
            channel = Channel(name.rsplit(f"{self.identity.node_id}/", 1)[-1])
            body, _ = decode(payload, max_bytes=1 << 20)
            await self._dispatch(channel, body)
        except (ValueError, RequestError) as exc:
            log.warning("ignored a malformed message on %s: %s", name, exc)
        except Exception:  # handling one message must not end the agent
            log.exception("handling a message on %s failed", name)

    async def _dispatch(self, channel: Channel, body: JSONObject) -> None:
        if channel is Channel.DESIRE:
            desire = parse_desire(body)
            get = self._get
            if get is not None and desire.client_token == get.token:
                self._get = None
                if desire.version < get.version:
                    # The answer to our own request is older than what we had before asking:
                    # the cloud's shadows went back (a database restored from a backup). The
                    # cloud's versions only grow, so no true answer is older: follow it.
                    log.warning("the cloud's desired state went back from version %d to %d "
                                "(its store restored?); following it", get.version,
                                desire.version)  # fmt: skip
                    self._follower = DesiredFollower(desire.version - 1)
            if self._follower.offer(desire):
                self._desired = desire.desired
                self._save_state()
                self._apply_properties()
                await self._reconcile()
        elif channel is Channel.RESOURCE:
            resource = parse_resource(body)
            self._specs[f"{resource.kind}/{resource.name}/{resource.version}"] = resource.spec
            self._save_state()
            await self._reconcile()
        elif channel is Channel.REPORT_ACCEPTED:
            self._reports.accepted(str(body.get("clientToken", "")))
        elif channel in (
            Channel.REPORT_REJECTED,
            Channel.RESOURCE_REJECTED,
            Channel.DESIRE_REJECTED,
        ):
            rejected = parse_rejected(body)
            if channel is Channel.REPORT_REJECTED:
                self._reports.rejected(rejected.client_token or "", rejected.code)
            elif channel is Channel.RESOURCE_REJECTED and rejected.code == 404:
                # A spec at that version is gone: our desired state is stale; ask again.
                self._ask_desired()
            elif channel is Channel.DESIRE_REJECTED and self._get is not None:
                # Busy (429) or the store away (500): ask again after a back-off, not at once.
                retry = time.monotonic() + _spec_retry_delay(self._get.attempts - 1)
                self._get.resend_at = min(self._get.resend_at, retry)
            log.info("%s refused: %s %s", channel, rejected.code, rejected.message)

    # -- certificate renewal -----------------------------------------------------------------------

    async def _renew_if_due(self) -> None:
        """Renew when due; reconnect with a new certificate; retire the old one once connected."""
        now = time.monotonic()
        if now >= self._next_renewal_check:
            self._next_renewal_check = now + self.config.renew_interval
            self._retire_due = True
            try:
                if self._renewal_may_be_due():
                    await asyncio.to_thread(_renew_now_if_due, self.config)
            except EdgeError as exc:
                log.warning("could not renew the certificate; keeping the current one: %s", exc)
            if _serial(self.identity.cert) != self._client_serial:
                self._reconnect("with the renewed certificate")
        # Only over a session made with the certificate on disk: retiring the one the session
        # uses (renewed meanwhile by 'baetyl edge renew') would have the broker cut it.
        if (
            self._retire_due
            and self._connected.is_set()
            and _serial(self.identity.cert) == self._client_serial
        ):
            self._retire_due = False
            previous = self.config.state_dir / PREVIOUS_CERT_FILE
            try:
                if previous.exists() and await asyncio.to_thread(_retire_now, previous.parent):
                    log.info("the cloud retired the certificate the renewal replaced")
            except EdgeError as exc:
                log.warning("could not retire the previous certificate (retrying later): %s", exc)

    def _renewal_may_be_due(self) -> bool:
        """Whether ``edge.renewal`` has work: a renewal left half done, or the certificate due.

        A certificate this cannot read counts as due: ``renew_if_due`` then says what is wrong.
        """
        if (self.config.state_dir / NEW_CERT_FILE).exists():
            return True
        try:
            certificate = read_certificate(self.identity.cert)
        except (OSError, ValueError):
            return True
        return renewal_due(
            certificate, now=datetime.now(UTC), threshold=self.config.renew_threshold
        )

    def _reconnect(self, why: str) -> None:
        """Replace the MQTT client with one using the certificate now on disk and the keepalive
        in effect; apps keep running."""
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
        self._connected.clear()
        self._reports.on_disconnect()
        self._keepalive = self.properties.keepalive
        self._client.connect_async(self.identity.host, self.identity.port, self._keepalive)
        self._client.loop_start()

    # -- node properties ---------------------------------------------------------------------------

    def _apply_properties(self) -> None:
        """Hand the desired properties over; a new keepalive takes a new connection (MQTT sets
        it at CONNECT), so the broker's half-open bound follows it. The report of the value in
        effect, queued now, goes out over that connection."""
        self.properties.desire(self._desired.get("nodeprops"))
        if self.properties.keepalive != self._keepalive:
            self._reconnect(f"with a keepalive of {self.properties.keepalive} s")

    # -- reconcile ---------------------------------------------------------------------------------

    async def _reconcile(self, *, resync: bool = False) -> None:
        """Apply the desired apps whose specs are all here; ask for the specs that are not.

        An app waiting for a spec keeps running at the version applied before (its specs are
        kept), and one never applied waits; the other apps go on. Nothing is applied while
        waiting if that would change nothing, unless ``resync``; nor when the agent does not
        know what it applied (a first start with specs missing: the engine runs what it adopted).
        """
        refs = [
            (str(a.get("name")), str(a.get("version")))
            for a in self._desired.get("apps", []) or []
            if isinstance(a, dict)
        ]
        previous = dict(self._applied or [])
        missing: list[tuple[str, str, str]] = []
        apps: list[AppSpec] = []
        chosen: list[tuple[str, str]] = []
        for name, version in refs:
            app, lacking = self._app_spec(name, version)
            if app is None:
                missing.extend(lacking)
                old = previous.get(name)
                kept = None if old is None or old == version else self._app_spec(name, old)[0]
                if kept is not None:
                    apps.append(kept)
                    chosen.append((kept.name, kept.version))
                continue
            apps.append(app)
            chosen.append((name, version))
        self._incomplete = bool(missing)
        if missing:
            self._ask_for(missing)
            tried = chosen in (self._applied, self._attempted)  # done, or failed: until resync
            if self._applied is None or (tried and not resync):
                return
        else:
            self._requested.clear()
        self._next_resync = time.monotonic() + self.config.resync_interval
        self._attempted = chosen
        try:
            await self.engine.apply(apps)
        except EdgeError as exc:  # the Kubernetes API away, say: the apps that run keep running
            log.warning("the engine could not apply the desired apps; trying again in %.0f s: %s",
                        self.config.resync_interval, exc)  # fmt: skip
            return
        self._applied = chosen
        self._prune_specs(chosen + [ref for ref in refs if ref not in chosen])

    def _app_spec(
        self, name: str, version: str
    ) -> tuple[AppSpec | None, list[tuple[str, str, str]]]:
        """The app at ``version`` with what it uses (configs, secrets, certificates, registries),
        or None and what it lacks."""
        spec = self._specs.get(f"app/{name}/{version}")
        if spec is None:
            return None, [("app", name, version)]
        lacking: list[tuple[str, str, str]] = []
        used: dict[str, dict[str, dict[str, str]]] = {
            "config": {}, "secret": {}, "certificate": {}, "registry": {}
        }  # fmt: skip
        for ref in references(spec):
            data = self._specs.get(ref.key)
            if data is None:
                lacking.append((ref.kind, ref.name, ref.version))
            else:
                used[ref.kind][ref.name] = dict(data.get("data", {}))
        if lacking:
            return None, lacking
        return AppSpec(name, version, spec, used["config"], used["secret"],
                       used["certificate"], used["registry"]), []  # fmt: skip

    def _ask_for(self, missing: list[tuple[str, str, str]]) -> None:
        """Send ``resource/get`` for each missing spec not asked for too recently."""
        if not self._connected.is_set():
            return
        now = time.monotonic()
        for kind, name, version in missing:
            key = f"{kind}/{name}/{version}"
            attempts, not_before = self._requested.get(key, (0, 0.0))
            if now >= not_before:
                self._requested[key] = (attempts + 1, now + _spec_retry_delay(attempts))
                self._publish(
                    Channel.RESOURCE_GET,
                    {"clientToken": f"res-{uuid.uuid4().hex[:12]}", "kind": kind,
                     "name": name, "version": version},
                )  # fmt: skip

    def _prune_specs(self, refs: list[tuple[str, str]]) -> None:
        """Forget every spec the applied apps no longer use (old secrets included)."""
        keep = {f"app/{n}/{v}" for n, v in refs}
        for key in list(keep):
            keep.update(ref.key for ref in references(self._specs.get(key) or {}))
        for key in list(self._specs):
            if key not in keep:
                del self._specs[key]
        self._save_state()

    # -- reports -----------------------------------------------------------------------------------

    async def _report_if_due(self) -> None:
        """Queue a report when something changed or a full one is due; send one if online."""
        now = time.monotonic()
        statuses = [status.to_report() for status in self.engine.status()]
        changed = statuses != self._last_status
        if changed or self._reports.due(now):
            self._last_status = statuses
            patch: JSONObject = {
                "apps": [{"name": s["name"], "version": s["version"]} for s in statuses],
                "appstats": statuses,
            }
            if self._reports.due(now):
                patch["node"] = dict(node_info())
                patch["nodestats"] = dict(node_stats())
                patch.update(self.properties.full_patch())
                self._reports.full_reported(now)
            self._reports.put(patch)
        if self._connected.is_set():
            taken = self._reports.take(now)
            if taken is not None:
                self._publish(Channel.REPORT, {"clientToken": taken.token, "reported": taken.patch})


def _spec_retry_delay(attempts: int) -> float:
    """Seconds before asking again for a spec asked for ``attempts`` times already, unanswered.

    5 s, then doubling to at most a minute, jittered by up to half again, so that a fleet whose
    answers failed together (a database outage: 500) does not ask again together.
    """
    return min(5.0 * 2.0**attempts, 60.0) * (1.0 + random.random() / 2)  # noqa: S311


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


def _serial(path: Path) -> int:
    """The serial of the certificate in ``path``; 0 if it cannot be read."""
    try:
        return read_certificate(path).serial_number
    except (OSError, ValueError):
        return 0


def _renew_now_if_due(config: AgentConfig) -> None:
    from edge.renewal import renew_if_due  # loads cryptography: only when there is work

    renew_if_due(config.state_dir, now=datetime.now(UTC), threshold=config.renew_threshold)


def _retire_now(state_dir: Path) -> bool:
    from edge.renewal import retire_previous  # loads cryptography: only when there is work

    return retire_previous(state_dir)

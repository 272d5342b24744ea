"""The store-and-forward tests' world: a cloud, a node, devices and a consumer, all real.

* the cloud is ``baetyl up`` as a subprocess (``tests.faults.cloud.Up``: stopped gracefully,
  SIGKILLed and started again on the same ports, data directory and database);
* the node is ``baetyl edge run --node-broker on`` (:class:`Node`), activated from its install
  command, talking to the cloud through a :class:`~tests.support.agent.Partition` relay that can
  cut its uplink; its node broker is the system app ``baetyl-broker`` the native engine runs;
* devices (:class:`Device`) are paho clients with a password that publish ``(device, seq)`` at
  QoS 1 on ``devices/<name>/telemetry``, in order, a window in flight, and send again what was
  not acknowledged after a reconnect (paho does: at least once);
* the consumer (:class:`Consumer`) is a service on a persistent session (clean session 0, QoS 1)
  subscribed to ``$baetyl/node/+/up/#`` before the devices start; it reconnects by itself and
  subscribes again only when the broker says its session is gone;
* :func:`tally` compares what arrived with what was published: per device the first arrivals,
  whether they are in order, the missing ones and the duplicates.

Every process is ended by :meth:`World.close` (agents, the apps they left, the cloud).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from certs import CertificateAuthority
from edge.engines.appdir import read_state
from tests.faults.cloud import Up
from tests.support.agent import Partition, activate_node, point_agent_at, stop_left_apps
from tests.support.cloud import Api
from tests.support.polling import until
from tests.support.up import BAETYL

__all__ = ["Consumer", "Device", "Node", "Tally", "World", "tally"]

NODE = "gw-1"
NODE_ID = f"default.{NODE}"
ROUTE = "telemetry-up"
UPLINK = f"$baetyl/node/{NODE_ID}/up/telemetry/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client(
    client_id: str, *, clean_session: bool, ca: Path, cert: tuple[Path, Path] | None = None
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(*cert)
    client.tls_set_context(context)
    client.reconnect_delay_set(1, 2)  # paho's types: whole seconds
    return client


def _stop_loop(client: mqtt.Client) -> None:
    """Stop paho's network thread and close the socket pair ``loop_start`` made: paho closes it
    only in ``__del__`` and makes a new one at the next ``loop_start`` (ResourceWarnings)."""
    client.loop_stop()
    for name in ("_sockpairR", "_sockpairW"):
        pair_end = getattr(client, name, None)
        if pair_end is not None:
            pair_end.close()
            setattr(client, name, None)


class Consumer:
    """The cloud service reading the node's uplink on a persistent session."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[tuple[str, int]] = []
        self.connects: list[bool] = []  # session present, per CONNACK
        self.client = _client(client_id, clean_session=False, ca=ca, cert=(cert, key))
        self.client.max_inflight_messages_set(100)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.port = port
        self.subscribed = threading.Event()

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            return
        with self.lock:
            self.connects.append(bool(flags.session_present))
        if not flags.session_present:  # a consumer that finds its session gone subscribes again
            client.subscribe("$baetyl/node/+/up/#", 1)
        self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Not asserted here (paho's thread would swallow it): a message on another device's
        # topic counts under a name no device has, so the tally shows it.
        body = json.loads(msg.payload)
        device = body["d"] if msg.topic == UPLINK + body["d"] else f"wrong topic {msg.topic}"
        with self.lock:
            self.arrivals.append((device, int(body["s"])))

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()

    def pause(self) -> None:
        """Go away (DISCONNECT if connected): the session keeps what arrives meanwhile."""
        self.client.disconnect()
        _stop_loop(self.client)

    def resume(self) -> None:
        self.start()

    def unique(self) -> int:
        with self.lock:
            return len(set(self.arrivals))

    def snapshot(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.arrivals)

    def close(self) -> None:
        self.client.disconnect()
        _stop_loop(self.client)


class Device:
    """A device publishing ``count`` messages ``{"d": name, "s": seq}`` at QoS 1, in order.

    ``pace`` messages per second at most (so a fault lands mid-stream); ``window`` publishes
    waiting for their PUBACK at most. paho keeps the unacknowledged ones and sends them again
    after it reconnects (at least once); the device publishes nothing new until they are all
    acknowledged, as a device that keeps its order must: paho 2.2 sends a message published
    between its reconnect and its CONNACK before the ones it sends again.
    """

    def __init__(
        self, name: str, password: str, port: int, ca: Path, count: int, *, pace: float = 400.0
    ) -> None:
        self.name = name
        self.count = count
        self.pace = pace
        self.window = 200
        self.acked = 0
        self.sent = 0
        self.connects = 0
        self._resending = False  # since a lost connection, until what was sent is acknowledged
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.client = _client(name, clean_session=True, ca=ca)
        self.client.username_pw_set(name, password)
        # No window of paho's (its queue would decide the order): the device's own, ``window``.
        self.client.max_inflight_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.port = port
        self._thread = threading.Thread(target=self._run, name=f"device-{name}", daemon=True)
        self.error: BaseException | None = None

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            with self._cond:
                self.connects += 1
                self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
        with self._cond:
            self._resending = self.sent > self.acked

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with self._cond:
            self.acked += 1
            if self.acked >= self.sent:
                self._resending = False
            self._cond.notify_all()

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._cond:
                while not self.connects and not self._stop.is_set():
                    self._cond.wait(0.5)
            began = time.monotonic()
            for seq in range(self.count):
                with self._cond:
                    while (
                        self.sent - self.acked >= self.window or self._resending
                    ) and not self._stop.is_set():
                        self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                ahead = began + seq / self.pace - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                payload = json.dumps({"d": self.name, "s": seq}).encode()
                # Connected or not, paho keeps a QoS 1 message until its PUBACK.
                self.client.publish(f"devices/{self.name}/telemetry", payload, 1)
                with self._cond:
                    self.sent += 1
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc

    def done(self) -> bool:
        with self._cond:
            return self.acked >= self.count

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(10)
        self.client.disconnect()
        _stop_loop(self.client)


@dataclass
class Tally:
    """What arrived of what the devices published."""

    published: dict[str, int]
    first: dict[str, list[int]]  # per device, the sequence numbers in order of first arrival
    duplicates: int
    missing: dict[str, list[int]]

    @property
    def in_order(self) -> bool:
        return all(seqs == sorted(seqs) for seqs in self.first.values())

    def summary(self) -> str:
        lost = sum(len(m) for m in self.missing.values())
        total = sum(self.published.values())
        text = f"{total} published, {lost} missing, {self.duplicates} duplicates, " + (
            "first arrivals in order" if self.in_order else "FIRST ARRIVALS OUT OF ORDER"
        )
        gaps = {name: _ranges(seqs) for name, seqs in self.missing.items() if seqs}
        text += f"; missing: {gaps}" if gaps else ""
        disorder = {
            name: [(seqs[i - 1], seqs[i]) for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1]][:5]
            for name, seqs in self.first.items()
        }
        disorder = {name: pairs for name, pairs in disorder.items() if pairs}
        return text + (f"; first arrivals going back (after, then): {disorder}" if disorder else "")


def _ranges(seqs: list[int]) -> str:
    """``1-3,7`` for [1, 2, 3, 7] (at most 10 ranges)."""
    out: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ",".join(out[:10]) + (",..." if len(out) > 10 else "")


def tally(published: dict[str, int], arrivals: list[tuple[str, int]]) -> Tally:
    first: dict[str, list[int]] = {name: [] for name in published}
    seen: set[tuple[str, int]] = set()
    for device, seq in arrivals:
        if (device, seq) not in seen:
            seen.add((device, seq))
            first.setdefault(device, []).append(seq)
    duplicates = sum(n - 1 for n in Counter(arrivals).values())
    missing = {
        name: [s for s in range(count) if (name, s) not in seen]
        for name, count in published.items()
    }
    return Tally(published, first, duplicates, missing)


@dataclass
class Node:
    """``baetyl edge run --node-broker on`` on an activated state directory."""

    state: Path
    broker_port: int
    extra: tuple[str, ...] = ()
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        log = self.state.parent / f"agent-{len(self.agents) + 1}.log"
        with log.open("wb") as err:  # a file: a pipe nobody reads would stall a debug log
            proc = subprocess.Popen(
                [BAETYL, "--log-level", "debug", "edge", "run", "--state-dir", str(self.state),
                 "--report-interval", "1", "--functions-port", "0",
                 "--node-broker", "on", "--node-broker-port", str(self.broker_port),
                 "--node-broker-host", "localhost", "--node-broker-host", "127.0.0.1",
                 *self.extra],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        self.agents.append(proc)
        return proc

    @property
    def agent(self) -> subprocess.Popen[bytes]:
        return self.agents[-1]

    async def kill_agent(self) -> None:
        self.agent.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.agent.wait, 30)

    def broker_pid(self) -> int | None:
        """The node broker's pid, as the native engine recorded it."""
        for path in (self.state / "native").glob("**/state.json"):
            try:
                record = read_state(path.parent)
            except (OSError, ValueError):
                continue
            if record["name"] == "baetyl-broker":
                for instance in record["instances"]:
                    if instance["pid"] is not None:
                        return instance["pid"]
        return None

    @property
    def device_ca(self) -> Path:
        return self.state / "nodebroker" / "device-ca.crt"

    def route_cursor(self) -> int | None:
        """The route's cursor as the agent persisted it in the spool."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.state / 'nodebroker' / 'spool.db'}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT last_id FROM cursors WHERE route = ?", (ROUTE,)).fetchone()
            return None if row is None else int(row[0])
        finally:
            conn.close()

    def spooled_after(self, cursor: int) -> list[tuple[str, int]]:
        """The ``(device, seq)`` of every spooled message after ``cursor``."""
        import sqlite3

        conn = sqlite3.connect(f"file:{self.state / 'nodebroker' / 'spool.db'}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT payload FROM messages WHERE id > ?", (cursor,)).fetchall()
        finally:
            conn.close()
        return [(body["d"], int(body["s"])) for body in (json.loads(r[0]) for r in rows)]

    async def stop(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 15)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        await stop_left_apps(self.state)


class World:
    """The cloud (``baetyl up``), the node behind a relay, its devices and the consumer."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.up = Up(tmp_path / "cloud", db_url)
        self.relay: Partition | None = None
        self.node: Node | None = None
        self.consumer: Consumer | None = None
        self.devices: list[Device] = []
        self.api: Api | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, devices: int, *, agent_options: tuple[str, ...] = ()) -> dict[str, str]:
        """Cloud up, node gw-1 activated, ``devices`` devices with passwords, the route; the
        consumer connected and subscribed. The agent is not started. Device name → password."""
        workdir = self.tmp_path / "cloud"
        workdir.mkdir()
        await asyncio.to_thread(self.up.run, "certs", "init")
        token = (await asyncio.to_thread(self.up.run, "tokens", "create", "--name", "t")).split()[
            -1
        ]
        ports = await self.up.start()
        self._session = aiohttp.ClientSession()
        self.api = Api(self._session, f"http://127.0.0.1:{ports['api']}", "default", token)
        state = self.tmp_path / "edge"
        await activate_node(self.api, NODE, {"site": "x"}, state)
        self.relay = Partition(ports["mqtts"])
        await self.relay.start()
        point_agent_at(state, self.relay.port)
        self.node = Node(state, free_port(), agent_options)
        passwords = {}
        for index in range(1, devices + 1):
            name = f"d{index}"
            status, body = await self.api.call("POST", "/devices", {"name": name, "node": NODE})
            assert status == 201, body
            status, body = await self.api.call("POST", f"/devices/{name}/password")
            assert status == 201, body
            passwords[name] = body["password"]
        route = {
            "name": ROUTE,
            "selector": "site=x",
            "source": {"local": "devices/+/telemetry"},
            "target": {"cloud": "telemetry/{device}"},
            "qos": 1,
        }
        status, body = await self.api.call("POST", "/routes", route)
        assert status == 201, body
        # The consumer: a service's certificate, a persistent session, before any message.
        ca = CertificateAuthority.load(workdir / "baetyl-data" / "ca")
        issued = ca.issue_service("telemetry")
        assert issued.private_key_pem is not None
        cert, key = self.tmp_path / "svc.crt", self.tmp_path / "svc.key"
        cert.write_bytes(issued.certificate_pem)
        key.write_bytes(issued.private_key_pem)
        self.consumer = Consumer(
            ports["mqtts"], workdir / "baetyl-data" / "ca" / "ca.crt", cert, key,
            "service:telemetry",
        )  # fmt: skip
        self.consumer.start()
        await until(self.consumer.subscribed.is_set, 30, "the consumer to subscribe")
        await until(lambda: self.consumer is not None and self.consumer.connects, 30, "connack")
        return passwords

    async def start_devices(self, passwords: dict[str, str], per_device: int) -> None:
        """Start the agent (if not yet), wait for the node broker, start the devices publishing."""
        node = self.node
        assert node is not None
        if not node.agents:
            node.start()
        await until(node.device_ca.exists, 90, "the node broker's device CA file")
        await until(lambda: self.route_ready(), 90, "the node to run the route")
        for name, password in passwords.items():
            device = Device(name, password, node.broker_port, node.device_ca, per_device)
            self.devices.append(device)
            device.start()

    async def route_ready(self) -> bool:
        """Whether the node reports the route (the router runs it: messages from now on go up)."""
        assert self.api is not None
        status, stats = await self.api.call("GET", f"/nodes/{NODE}/stats")
        return status == 200 and ROUTE in stats.get("routes", {})

    def acked(self) -> int:
        return sum(d.acked for d in self.devices)

    def published(self) -> dict[str, int]:
        return {d.name: d.count for d in self.devices}

    def errors(self) -> list[BaseException]:
        return [d.error for d in self.devices if d.error is not None]

    async def route_stats(self) -> dict[str, Any]:
        assert self.api is not None
        status, stats = await self.api.call("GET", f"/nodes/{NODE}/stats")
        assert status == 200, stats
        routes: dict[str, Any] = stats.get("routes", {})
        return dict(routes.get(ROUTE) or {})

    async def close(self) -> None:
        for device in self.devices:
            await asyncio.to_thread(device.close)
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.close)
        if self.node is not None:
            await self.node.stop()
        if self.relay is not None:
            await self.relay.cut()
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.up.stop)

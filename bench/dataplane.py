"""Device → cloud messaging through a node, QoS 1 with persistence: a Mosquitto bridge beside ours.

    .venv/bin/python -m bench.dataplane [--stack mosquitto,mosquitto-unbounded,pybaetyl] [--quick]

Each stack is a cloud broker, a node that devices connect to, and the path between them:

- ``mosquitto``: two Mosquitto brokers on free loopback ports, each with its own temporary
  configuration and persistence directory: a "cloud" one and a "node" one bridging to it
  (``connection cloud``, ``topic devices/# out 1``, ``cleansession false``, persistence on),
  every other setting at its default, as a user would start: 20 messages in flight and 1,000
  queued per client (the bridge is one), the rest dropped. Plaintext on loopback.
- ``mosquitto-unbounded``: the same with ``max_queued_messages 0`` on both brokers (no queue
  limit), to show what the default limit costs.
- ``pybaetyl``: ``baetyl up`` as the cloud, a node created and activated from its install command
  running ``baetyl edge run --node-broker on`` (the node broker on a loopback port), a Route
  ``devices/+/telemetry`` → cloud ``telemetry/{device}`` at QoS 1, devices with passwords over TLS
  (the device CA) and a service certificate subscribed to ``$baetyl/node/+/up/#``.

The load, the same for every stack: ``--devices`` paho clients (in one child process, each with
``--inflight`` QoS 1 publishes outstanding, or paced to ``--rate`` in total) publishing to
``devices/<name>/telemetry`` a payload carrying (phase, device, sequence, send time); a cloud
subscriber (another child process, clean session false, QoS 1) stamps each arrival.

1. probe: one message per device until all reach the cloud (the bridge or route is up);
2. sustained: ``--duration`` s of publishing as fast as ``--inflight`` allows (or ``--rate``)
   → msg/s received at the cloud within the window, PUBACKs/s from the node, loss
   (acknowledged by the node, never received), RSS and CPU of the node side (the node
   Mosquitto; the agent and its node broker). Latency here is that of a saturated path;
3. paced: ``--duration`` s at ``--paced-rate`` msg/s in total (default 5,000, the
   target) → p50/p99 device publish → cloud receive while the path keeps up, loss;
4. outage: the cloud stopped (SIGTERM), ``--burst`` messages published and acknowledged by the
   node, the cloud started again on the same ports and data → time to the first arrival,
   drain rate (first → last arrival), how many arrived, duplicates, order per device.

The load generator's CPU is recorded per phase: it shares the machine's cores with the brokers.
Every process started here is stopped at the end (SIGTERM, then SIGKILL); every wait is bounded.
Prints a table (and ratios pybaetyl / mosquitto), writes ``--out-dir/dataplane-<UTC>.json`` and,
with ``--publish``, its summary to bench/published/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench import report
from bench.brokers import MOSQUITTO, free_port, mosquitto_version

ROOT = Path(__file__).resolve().parent
BAETYL = str(Path(sys.executable).with_name("baetyl"))
STACKS = ("mosquitto", "mosquitto-unbounded", "pybaetyl")
HEADER = struct.Struct("!BHId")  # phase, device index, sequence, send time (time.monotonic)
PROBE, SUSTAINED, PACED, OUTAGE = 1, 2, 3, 4
TARGETS = {"sustained_msgs_per_s": 5000.0, "p99_ms": 50.0, "drain_msgs_per_s": 5000.0}
ROUTE = {
    "kind": "Route",
    "name": "telemetry-up",
    "selector": "bench=dataplane",
    "source": {"local": "devices/+/telemetry"},
    "target": {"cloud": "telemetry/{device}"},
    "qos": 1,
}


# --------------------------------------------------------------------------------------------
# The child processes: devices and the cloud subscriber. Each reads JSON commands, one a line,
# on stdin and answers each with one JSON line on stdout.


def _client(spec: dict[str, Any], *, clean_session: bool) -> Any:
    """A paho client (v2 callbacks) for ``spec``: host, port, client_id, and optionally ca,
    cert/key (client certificate) and username/password."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=spec["client_id"],
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if spec.get("ca"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=spec["ca"])
        if spec.get("cert"):
            context.load_cert_chain(spec["cert"], spec["key"])
        client.tls_set_context(context)
    if spec.get("username"):
        client.username_pw_set(spec["username"], spec.get("password"))
    client.reconnect_delay_set(1, 2)
    return client


def _connect_all(clients: Sequence[Any], specs: Sequence[dict[str, Any]], timeout: float) -> None:
    """Connect every client (retried in paho's thread until accepted) or raise after timeout."""
    connected = [threading.Event() for _ in clients]
    refused: dict[int, str] = {}
    for index, (client, spec) in enumerate(zip(clients, specs, strict=True)):

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any, index: int = index) -> None:
            if reason.value == 0:
                connected[index].set()
            else:
                refused[index] = str(reason)

        client.on_connect = on_connect
        client.connect_async(spec["host"], spec["port"], keepalive=60)
        client.loop_start()
    deadline = time.monotonic() + timeout
    for index, event in enumerate(connected):
        if not event.wait(max(0.0, deadline - time.monotonic())):
            why = refused.get(index, "no CONNACK")
            raise RuntimeError(f"{specs[index]['client_id']} did not connect in {timeout} s: {why}")


class _Devices:
    """The device clients and the loop that keeps each one's publishes in flight."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.specs: list[dict[str, Any]] = config["devices"]
        self.inflight: int = config["inflight"]
        self.payload_bytes: int = config["payload_bytes"]
        self.clients = [_client(spec, clean_session=True) for spec in self.specs]
        self.acked = [0] * len(self.specs)
        self.sent = [0] * len(self.specs)
        self.seq = [0] * len(self.specs)
        self.wake = threading.Event()
        for index, client in enumerate(self.clients):
            client.max_inflight_messages_set(self.inflight)
            client.on_publish = self._on_publish(index)
        _connect_all(self.clients, self.specs, config["connect_timeout"])

    def _on_publish(self, index: int) -> Callable[..., None]:
        def on_publish(_c: Any, _u: Any, _mid: int, _reason: Any, _p: Any) -> None:
            self.acked[index] += 1  # only this device's network thread writes it
            self.wake.set()

        return on_publish

    def run(self, phase: int, per_device: int, duration: float, rate: float) -> dict[str, Any]:
        """Publish ``per_device`` messages from each device (0: until ``duration`` is over),
        ``inflight`` outstanding each, at most ``rate`` msg/s in total (0: no pacing); then wait
        (bounded) for every PUBACK."""
        count = len(self.clients)
        start_sent, start_acked = list(self.sent), list(self.acked)
        pad = b"\0" * max(0, self.payload_bytes - HEADER.size)
        started = time.monotonic()
        deadline = started + duration
        while True:
            self.wake.clear()
            now = time.monotonic()
            if now >= deadline:
                break
            budget = (
                int(rate * (now - started)) - sum(self.sent) + sum(start_sent) if rate else 1 << 30
            )
            left = [
                i
                for i in range(count)
                if not per_device or self.sent[i] - start_sent[i] < per_device
            ]
            done = not left
            progress = True
            while budget > 0 and progress:  # round robin, one message per device a pass
                progress = False
                for i in left:
                    if budget <= 0 or self.sent[i] - self.acked[i] >= self.inflight:
                        continue
                    if per_device and self.sent[i] - start_sent[i] >= per_device:
                        continue
                    self.seq[i] += 1
                    body = HEADER.pack(phase, i, self.seq[i], time.monotonic()) + pad
                    self.clients[i].publish(self.specs[i]["topic"], body, qos=1)
                    self.sent[i] += 1
                    budget -= 1
                    progress = True
            if done:
                break
            self.wake.wait(0.01 if not rate else 0.002)
        published_until = time.monotonic()
        settle = published_until + 30
        while sum(self.sent) > sum(self.acked) and time.monotonic() < settle:
            self.wake.clear()
            self.wake.wait(0.05)
        sent = sum(self.sent) - sum(start_sent)
        acked = sum(self.acked) - sum(start_acked)
        return {
            "t_start": started,
            "t_published": published_until,
            "t_acked": time.monotonic(),
            "sent": sent,
            "acked": acked,
            "unacked": sent - acked,
        }

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_stop()


class _Cloud:
    """The cloud subscriber: stamps every arrival of the bench's messages, by phase."""

    def __init__(self, config: dict[str, Any]) -> None:
        spec = config["cloud"]
        self.topic: str = spec["topic"]
        self.lock = threading.Lock()
        self.phases: dict[int, list[tuple[int, int, float, float]]] = {}
        self.reconnects = 0
        self.client = _client(spec, clean_session=False)
        self.client.on_message = self._on_message
        _connect_all([self.client], [spec], config["connect_timeout"])
        self.client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self._granted: list[int] = []
        self.client.on_subscribe = self._on_subscribe
        self.client.subscribe(self.topic, qos=1)
        if not self._subscribed.wait(config["connect_timeout"]):
            raise RuntimeError(f"no SUBACK for {self.topic}")
        if any(code >= 0x80 for code in self._granted):
            raise RuntimeError(f"the cloud refused the subscription to {self.topic}")

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        self._granted = [reason.value for reason in reasons]
        self._subscribed.set()

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.value == 0:
            self.reconnects += 1
            client.subscribe(self.topic, qos=1)  # harmless on a kept session; needed on a lost one

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        received = time.monotonic()
        payload = message.payload
        if len(payload) < HEADER.size:
            return
        phase, device, seq, sent = HEADER.unpack_from(payload)
        with self.lock:
            self.phases.setdefault(phase, []).append((device, seq, sent, received))

    def count(self, phase: int) -> dict[str, Any]:
        with self.lock:
            rows = list(self.phases.get(phase, ()))
        unique = len({(d, s) for d, s, _, _ in rows})
        devices = len({d for d, _, _, _ in rows})
        last = max((r for _, _, _, r in rows), default=None)
        return {"received": len(rows), "unique": unique, "devices": devices, "last": last}

    def stats(self, phase: int, window: list[float] | None) -> dict[str, Any]:
        with self.lock:
            rows = list(self.phases.get(phase, ()))
        seen: set[tuple[int, int]] = set()
        latencies: list[float] = []
        last_seq: dict[int, int] = {}
        out_of_order = 0
        in_window = 0
        for device, seq, sent, received in rows:
            if (device, seq) in seen:
                continue
            seen.add((device, seq))
            latencies.append((received - sent) * 1000)
            if seq < last_seq.get(device, 0):
                out_of_order += 1
            last_seq[device] = max(seq, last_seq.get(device, 0))
            if window and window[0] <= received <= window[1]:
                in_window += 1
        latencies.sort()
        arrivals = [r for _, _, _, r in rows]
        return {
            "received": len(rows),
            "unique": len(seen),
            "duplicates": len(rows) - len(seen),
            "out_of_order": out_of_order,
            "in_window": in_window,
            "first": min(arrivals, default=None),
            "last": max(arrivals, default=None),
            "latency_ms": {
                "p50": _percentile(latencies, 0.50),
                "p90": _percentile(latencies, 0.90),
                "p99": _percentile(latencies, 0.99),
                "max": latencies[-1] if latencies else None,
            },
            "reconnects": self.reconnects,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _worker(role: str) -> None:
    """A child process: builds its clients from the first line, then serves commands."""
    config = json.loads(sys.stdin.readline())
    try:
        target: _Devices | _Cloud = _Devices(config) if role == "devices" else _Cloud(config)
    except Exception as exc:  # the parent prints it and stops everything
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            name = command.pop("cmd")
            if name == "quit":
                break
            answer = getattr(target, name)(**command)
            print(json.dumps(answer), flush=True)
    finally:
        target.close()


class Worker:
    """A child process running ``_worker(role)``; ``call`` sends a command and reads its answer."""

    def __init__(self, role: str, config: dict[str, Any], log: Path) -> None:
        self.role = role
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.dataplane", "--worker", role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT.parent,
        )
        try:
            answer = self._send(config)
            if "error" in answer:
                raise RuntimeError(f"{role}: {answer['error']}")
        except BaseException:
            self.close()
            raise

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.role} process exited (its log: {self._log.name})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return self._send({"cmd": cmd, **args})

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.process.stdin is not None
                self.process.stdin.write('{"cmd": "quit"}\n')
                self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
        self._log.close()


# --------------------------------------------------------------------------------------------
# The stacks.


class Stack(Protocol):
    name: str

    def start(self, devices: int) -> None: ...
    def device_specs(self) -> list[dict[str, Any]]: ...
    def cloud_spec(self) -> dict[str, Any]: ...
    def stop_cloud(self) -> None: ...
    def start_cloud(self) -> None: ...
    def node_pids(self) -> dict[str, int]: ...
    def describe(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _stop(process: subprocess.Popen[Any] | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_port(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} in {timeout} s")


class MosquittoStack:
    """Two Mosquitto brokers, the node bridging ``devices/#`` out to the cloud at QoS 1."""

    def __init__(self, workdir: Path, *, unbounded: bool) -> None:
        self.name = "mosquitto-unbounded" if unbounded else "mosquitto"
        self.unbounded = unbounded
        self.workdir = workdir
        self.cloud_port = free_port()
        self.node_port = free_port()
        self.cloud: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.devices = 0

    def _conf(self, role: str, port: int, extra: Sequence[str]) -> Path:
        data = self.workdir / role
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            "persistence true",
            f"persistence_location {data}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
        ]
        if self.unbounded:
            lines.append("max_queued_messages 0")
        if os.geteuid() == 0:  # as root Mosquitto drops to "mosquitto", who cannot write here
            lines.insert(0, f"user {pwd.getpwuid(0).pw_name}")
        conf = data / "mosquitto.conf"
        conf.write_text("\n".join([*lines, *extra]) + "\n")
        return conf

    def _run(self, role: str, conf: Path, port: int) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{role}.log").open("ab") as log:
            process = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _wait_port(port, process, f"mosquitto ({role})")
        return process

    def start(self, devices: int) -> None:
        self.devices = devices
        self.cloud_conf = self._conf("cloud", self.cloud_port, [])
        bridge = [
            "connection cloud",
            f"address 127.0.0.1:{self.cloud_port}",
            "topic devices/# out 1",
            "cleansession false",
            "clientid bench-node",
        ]
        node_conf = self._conf("node", self.node_port, bridge)
        self.cloud = self._run("cloud", self.cloud_conf, self.cloud_port)
        self.node = self._run("node", node_conf, self.node_port)

    def device_specs(self) -> list[dict[str, Any]]:
        return [
            {
                "host": "127.0.0.1",
                "port": self.node_port,
                "client_id": f"dev-{i}",
                "topic": f"devices/dev-{i}/telemetry",
            }
            for i in range(self.devices)
        ]

    def cloud_spec(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.cloud_port,
            "client_id": "bench-cloud",
            "topic": "devices/+/telemetry",
        }

    def stop_cloud(self) -> None:
        _stop(self.cloud)
        self.cloud = None

    def start_cloud(self) -> None:
        self.cloud = self._run("cloud", self.cloud_conf, self.cloud_port)

    def node_pids(self) -> dict[str, int]:
        return {"node mosquitto": self.node.pid} if self.node and self.node.poll() is None else {}

    def describe(self) -> dict[str, Any]:
        return {
            "version": mosquitto_version(),
            "node_conf": (self.workdir / "node" / "mosquitto.conf").read_text(),
            "cloud_conf": self.cloud_conf.read_text(),
            "node_log_tail": _tail(self.workdir / "node.log"),
        }

    def close(self) -> None:
        _stop(self.node)
        _stop(self.cloud)


class PybaetylStack:
    """``baetyl up``, an activated node running its node broker, a route, password devices.

    Written against the data plane's contract: the node broker flags of ``baetyl
    edge run``, kinds ``Device`` and ``Route`` for ``baetyl apply``, ``baetyl device password``,
    the node broker's files under ``<state>/nodebroker/``.
    """

    name = "pybaetyl"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "cloud-data"
        self.state = workdir / "node-state"
        self.ports = {k: free_port() for k in ("mqtts", "api", "activation", "node_broker")}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BAETYL_")}
        self.env["XDG_CONFIG_HOME"] = str(workdir / "xdg")  # no client.toml of this user
        self.up: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.passwords: dict[str, str] = {}
        self.operator: dict[str, str] = {}
        self.devices = 0
        self.broker_pid: int | None = None

    def _baetyl(self, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [BAETYL, *argv], cwd=self.workdir, env=self.env, input=stdin,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            shown = (
                shlex.join(argv).replace(self.token, "<token>") if self.token else shlex.join(argv)
            )
            raise RuntimeError(f"baetyl {shown} failed: {done.stderr.strip()[-1500:]}")
        return done.stdout

    def _api(self) -> list[str]:
        return ["--api-url", f"http://127.0.0.1:{self.ports['api']}", "--token", self.token]

    def start_cloud(self) -> None:
        out = self.workdir / "up.out"
        settings = {
            "broker.host": "127.0.0.1", "broker.port": self.ports["mqtts"],
            "api.host": "127.0.0.1", "api.port": self.ports["api"],
            "api.activation_host": "127.0.0.1", "api.activation_port": self.ports["activation"],
        }  # fmt: skip
        argv = [f"--set={key}={value}" for key, value in settings.items()]
        with out.open("ab") as stdout, (self.workdir / "up.err").open("ab") as stderr:
            self.up = subprocess.Popen(
                [BAETYL, "--data-dir", str(self.data), *argv, "up"], cwd=self.workdir,
                env=self.env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _wait_port(self.ports["api"], self.up, "baetyl up", timeout=60)
        _wait_port(self.ports["mqtts"], self.up, "baetyl up", timeout=30)

    def stop_cloud(self) -> None:
        _stop(self.up, timeout=30)  # graceful: the broker saves its persistent sessions
        self.up = None

    def _request(self, path: str) -> Any:
        request = urllib.request.Request(  # our own loopback URL
            f"http://127.0.0.1:{self.ports['api']}/v1{path}",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def start(self, devices: int) -> None:
        self.devices = devices
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.start_cloud()
        data = ["--data-dir", str(self.data)]
        self.token = self._baetyl(*data, "tokens", "create", "--namespace", "bench").split()[-1]
        names = [f"dev-{i}" for i in range(devices)]
        manifest = [
            {"kind": "Node", "name": "dp-node", "labels": {"bench": "dataplane"}},
            *(
                {
                    "kind": "Device",
                    "name": name,
                    "node": "dp-node",
                    "topics": {
                        "publish": ["devices/{device}/telemetry"],
                        "subscribe": ["devices/{device}/#"],
                    },
                }
                for name in names
            ),
            ROUTE,
        ]
        path = self.workdir / "dataplane.json"
        path.write_text(json.dumps(manifest, indent=1))
        self._baetyl("apply", "-f", str(path), *self._api())
        for name in names:
            self.passwords[name] = _password(self._baetyl("device", "password", name, *self._api()))
        init = json.loads(self._baetyl("node", "init", "dp-node", "-o", "json", *self._api()))
        argv = shlex.split(init["cmd"])
        argv = [a.replace("https://localhost:", "https://127.0.0.1:") for a in argv]
        self._baetyl(*argv[1:], "--state-dir", str(self.state))
        flags = [
            "--node-broker", "on", "--node-broker-port", str(self.ports["node_broker"]),
            "--node-broker-bind", "127.0.0.1",
            "--node-broker-host", "127.0.0.1", "--node-broker-host", "localhost",
        ]  # fmt: skip
        with (self.workdir / "agent.log").open("ab") as log:
            self.agent = subprocess.Popen(
                [BAETYL, "edge", "run", "--state-dir", str(self.state), "--functions-port", "0",
                 *flags],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._request("/nodes/dp-node").get("online"):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the node did not come online: {_tail(self.workdir / 'agent.log')}"
                )
            time.sleep(0.3)
        _wait_port(self.ports["node_broker"], self.agent, "the node broker", timeout=60)
        # The consumer is a cloud service, as in production: an operator's session is for
        # debugging, and the cloud broker keeps at most 10,000 messages for it (a service
        # 1,000,000), which a node draining its spool after an outage overflows.
        operator = self.workdir / "operator"
        self._baetyl(
            *data, "certs", "issue", "service", "--name", "bench", "--out-dir", str(operator)
        )
        self.operator = {
            "cert": str(operator / "bench.crt"),
            "key": str(operator / "bench.key"),
            "ca": str(operator / "ca.crt"),
            "client_id": _common_name(operator / "bench.crt"),
        }

    def device_specs(self) -> list[dict[str, Any]]:
        return [
            {
                "host": "127.0.0.1",
                "port": self.ports["node_broker"],
                "ca": str(self.state / "nodebroker" / "device-ca.crt"),
                "client_id": name,
                "username": name,
                "password": password,
                "topic": f"devices/{name}/telemetry",
            }
            for name, password in self.passwords.items()
        ]

    def cloud_spec(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.ports["mqtts"],
            **self.operator,
            "topic": "$baetyl/node/+/up/#",
        }

    def node_pids(self) -> dict[str, int]:
        if self.agent is None or self.agent.poll() is not None:
            return {}
        broker = self._node_broker()
        return {"agent": self.agent.pid, **({"node broker": broker} if broker else {})}

    def _node_broker(self) -> int | None:
        """The node broker's pid: the agent's child, or any process naming its config (a
        system app may run in a session of its own); remembered while it runs."""
        import psutil

        mine = str(self.state / "nodebroker")
        if self.broker_pid is not None:
            with contextlib.suppress(psutil.Error):
                if mine in " ".join(psutil.Process(self.broker_pid).cmdline()):
                    return self.broker_pid
            self.broker_pid = None
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            if self.agent is not None:
                children = psutil.Process(self.agent.pid).children(recursive=True)
        for process in [*children, *psutil.process_iter()]:
            with contextlib.suppress(psutil.Error):
                line = " ".join(process.cmdline())
                if "broker.node" in line and mine in line:
                    self.broker_pid = process.pid
                    return process.pid
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "route": ROUTE,
            "ports": self.ports,
            "agent_log_tail": _tail(self.workdir / "agent.log"),
            "up_err_tail": _tail(self.workdir / "up.err"),
        }

    def close(self) -> None:
        import psutil

        broker = self._node_broker() if self.agent and self.agent.poll() is None else None
        _stop(self.agent, timeout=30)
        if self.state.is_dir():  # the node broker is a system app: it outlives a stopped agent
            with contextlib.suppress(Exception):
                _stop_left_apps(self.state)
        if broker is not None:  # still there (another engine layout): end it by its pid
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(broker)
                if str(self.state) in " ".join(process.cmdline()):
                    process.terminate()
                    try:
                        process.wait(10)
                    except psutil.TimeoutExpired:
                        process.kill()
        _stop(self.up, timeout=30)


def _stop_left_apps(state: Path) -> None:
    """Stop the native apps (the node broker) the agent left running, as its engine would."""
    import asyncio

    from edge.engines.native import NativeEngine

    async def stop_all() -> None:
        async with NativeEngine(state / "native", stop_timeout=5.0) as engine:
            await engine.stop_all()

    asyncio.run(stop_all())


def _password(out: str) -> str:
    """The password ``baetyl device password`` printed: a JSON object's, or its last word."""
    with contextlib.suppress(ValueError):
        body = json.loads(out)
        if isinstance(body, dict) and "password" in body:
            return str(body["password"])
    return out.split()[-1]


def _common_name(path: Path) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Measuring.


class NodeSampler:
    """Samples the RSS (sum over the node side's processes) every 0.2 s in a thread."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_kib = 0
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> dict[str, int]:
        import psutil

        found: dict[str, int] = {}
        for role, pid in self.stack.node_pids().items():
            with contextlib.suppress(psutil.Error):
                found[role] = psutil.Process(pid).memory_info().rss // 1024
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.last = self._rss()
            self.peak_kib = max(self.peak_kib, sum(self.last.values()))

    def cpu(self) -> float:
        return _cpu(self.stack.node_pids().values())

    def __enter__(self) -> NodeSampler:
        self.peak_kib = 0
        self.last = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _cpu(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (those still running)."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _probe(devices: Worker, cloud: Worker, count: int, timeout: float) -> float:
    """Publish one message per device until every device's has reached the cloud."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        devices.call("run", phase=PROBE, per_device=1, duration=5.0, rate=0.0)
        waited = time.monotonic()
        while time.monotonic() - waited < 2:
            if cloud.call("count", phase=PROBE)["devices"] >= count:
                return time.monotonic() - started
            time.sleep(0.1)
    raise RuntimeError(f"no message of every device reached the cloud in {timeout:.0f} s")


def _wait_arrivals(cloud: Worker, phase: int, wanted: int, idle: float, timeout: float) -> None:
    """Until ``wanted`` distinct messages arrived, nothing new for ``idle`` s after the first
    arrival, or ``timeout`` s."""
    started = time.monotonic()
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - started < timeout:
        counted = cloud.call("count", phase=phase)
        if counted["unique"] >= wanted:
            return
        if counted["unique"] != last_count:
            last_count, last_change = counted["unique"], time.monotonic()
        elif counted["unique"] > 0 and time.monotonic() - last_change > idle:
            return
        time.sleep(0.2)


def measure(stack: Stack, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start ``stack``, run the phases, stop everything it started; the figures."""
    result: dict[str, Any] = {"stack": stack.name}
    devices: Worker | None = None
    cloud: Worker | None = None
    try:
        began = time.monotonic()
        stack.start(args.devices)
        result["setup_s"] = time.monotonic() - began
        common = {"connect_timeout": args.connect_timeout}
        cloud = Worker("cloud", {**common, "cloud": stack.cloud_spec()}, workdir / "cloud.log")
        devices = Worker(
            "devices",
            {**common, "devices": stack.device_specs(), "inflight": args.inflight,
             "payload_bytes": args.payload_bytes},
            workdir / "devices.log",
        )  # fmt: skip
        result["probe_s"] = _probe(devices, cloud, args.devices, args.connect_timeout)
        load = [devices.process.pid, cloud.process.pid]
        for phase in ("sustained", "paced", "outage"):
            if phase not in args.phases:
                continue
            before = _cpu(load)
            if phase == "outage":
                result[phase] = _outage(stack, devices, cloud, args)
            else:
                number, rate = (
                    (SUSTAINED, args.rate) if phase == "sustained" else (PACED, args.paced_rate)
                )
                result[phase] = _sustained(stack, devices, cloud, number, args.duration, rate)
            # The load generator shares the cores with the brokers: its CPU says how much.
            result[phase]["loadgen_cpu_s"] = _cpu(load) - before
    except Exception as exc:  # reported with the stack's figures, run goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        for worker in (devices, cloud):
            if worker is not None:
                worker.close()
        with contextlib.suppress(Exception):
            result["describe"] = stack.describe()
        stack.close()
    return result


def _sustained(
    stack: Stack, devices: Worker, cloud: Worker, phase: int, duration: float, rate: float
) -> dict[str, Any]:
    with NodeSampler(stack) as sampler:
        cpu_before = sampler.cpu()
        ran = devices.call("run", phase=phase, per_device=0, duration=duration, rate=rate)
        cpu = sampler.cpu() - cpu_before
        # A saturated path ends the window with a backlog: wait for it (bounded) before
        # counting what never arrived as lost.
        _wait_arrivals(cloud, phase, ran["acked"], idle=10.0, timeout=120.0)
        rss = dict(sampler.last)
        peak = sampler.peak_kib
    window = [ran["t_start"], ran["t_published"]]
    got = cloud.call("stats", phase=phase, window=window)
    seconds = window[1] - window[0]
    return {
        "target_rate": rate or None,
        "seconds": seconds,
        "sent": ran["sent"],
        "acked": ran["acked"],
        "acked_per_s": ran["acked"] / seconds,
        "received_per_s": got["in_window"] / seconds,
        "received": got["unique"],
        "lost": max(0, ran["acked"] - got["unique"]),
        "duplicates": got["duplicates"],
        "out_of_order": got["out_of_order"],
        "latency_ms": got["latency_ms"],
        "node_rss_kib": rss,
        "node_rss_peak_kib": peak,
        "node_cpu_s": cpu,
        "node_cpu_us_per_msg": cpu / ran["acked"] * 1e6 if ran["acked"] else None,
    }


def _outage(
    stack: Stack, devices: Worker, cloud: Worker, args: argparse.Namespace
) -> dict[str, Any]:
    per_device = -(-args.burst // args.devices)
    with NodeSampler(stack) as sampler:
        stack.stop_cloud()
        cpu_before = sampler.cpu()
        ran = devices.call(
            "run", phase=OUTAGE, per_device=per_device, duration=args.burst_timeout, rate=0.0
        )
        restarted = time.monotonic()
        stack.start_cloud()
        _wait_arrivals(
            cloud, OUTAGE, ran["acked"], idle=args.drain_idle, timeout=args.drain_timeout
        )
        cpu = sampler.cpu() - cpu_before
        rss = dict(sampler.last)
        peak = sampler.peak_kib
    got = cloud.call("stats", phase=OUTAGE, window=None)
    first, last = got["first"], got["last"]
    drain = (last - first) if first is not None and last is not None else None
    publish_s = ran["t_acked"] - ran["t_start"]
    lost = max(0, ran["acked"] - got["unique"])
    return {
        "burst": ran["sent"],
        "acked_by_node": ran["acked"],
        "node_accept_s": publish_s,
        "node_accept_per_s": ran["acked"] / publish_s if publish_s else None,
        "arrived": got["unique"],
        "lost": lost,
        "lost_pct": 100 * max(0, ran["acked"] - got["unique"]) / ran["acked"]
        if ran["acked"]
        else None,
        "duplicates": got["duplicates"],
        "out_of_order": got["out_of_order"],
        "restart_to_first_s": None if first is None else first - restarted,
        "drain_s": drain,
        "drain_per_s": got["unique"] / drain if drain else None,
        "restart_to_last_s": None if last is None else last - restarted,
        "node_rss_kib": rss,
        "node_rss_peak_kib": peak,
        "node_cpu_s": cpu,
    }


# --------------------------------------------------------------------------------------------
# Reporting.


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def _at(phase: str, *keys: str) -> Callable[[dict[str, Any]], Any]:
    """The figure at ``result[phase][keys...]``, None when that phase did not run."""

    def get(result: dict[str, Any]) -> Any:
        value: Any = result.get(phase, {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return get


def _mib_at(phase: str, key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda result: _mib(_at(phase, key)(result))


ROWS: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
    ("sustained: received at the cloud (msg/s)", _at("sustained", "received_per_s"), 0),
    ("sustained: PUBACKed by the node (msg/s)", _at("sustained", "acked_per_s"), 0),
    ("sustained: latency p50 (ms)", _at("sustained", "latency_ms", "p50"), 1),
    ("sustained: latency p99 (ms)", _at("sustained", "latency_ms", "p99"), 1),
    ("sustained: latency max (ms)", _at("sustained", "latency_ms", "max"), 1),
    ("sustained: lost (acked, never received)", _at("sustained", "lost"), 0),
    ("sustained: node RSS at end (MiB)", _mib_at("sustained", "node_rss_kib"), 1),
    ("sustained: node CPU per message (us)", _at("sustained", "node_cpu_us_per_msg"), 0),
    ("paced: target (msg/s)", _at("paced", "target_rate"), 0),
    ("paced: received at the cloud (msg/s)", _at("paced", "received_per_s"), 0),
    ("paced: latency p50 (ms)", _at("paced", "latency_ms", "p50"), 1),
    ("paced: latency p99 (ms)", _at("paced", "latency_ms", "p99"), 1),
    ("paced: latency max (ms)", _at("paced", "latency_ms", "max"), 1),
    ("paced: lost (acked, never received)", _at("paced", "lost"), 0),
    ("paced: node CPU per message (us)", _at("paced", "node_cpu_us_per_msg"), 0),
    ("outage: burst acked by the node (msgs)", _at("outage", "acked_by_node"), 0),
    ("outage: node accepted (msg/s)", _at("outage", "node_accept_per_s"), 0),
    ("outage: arrived after restart (msgs)", _at("outage", "arrived"), 0),
    ("outage: lost (%)", _at("outage", "lost_pct"), 1),
    ("outage: duplicates", _at("outage", "duplicates"), 0),
    ("outage: out of order (per device)", _at("outage", "out_of_order"), 0),
    ("outage: cloud start -> first arrival (s)", _at("outage", "restart_to_first_s"), 2),
    ("outage: drain, first -> last arrival (msg/s)", _at("outage", "drain_per_s"), 0),
    ("outage: node RSS peak (MiB)", _mib_at("outage", "node_rss_peak_kib"), 1),
    ("load generator CPU, sustained (s)", _at("sustained", "loadgen_cpu_s"), 1),
    ("node CPU, sustained (s)", _at("sustained", "node_cpu_s"), 1),
]


def _mib(value: Any) -> float | None:
    if value is None:
        return None
    kib = sum(value.values()) if isinstance(value, dict) else value
    return float(kib) / 1024 if kib else None


def table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one column per stack, and pybaetyl / mosquitto when both ran."""
    names = [r["stack"] for r in results]
    by_name = {r["stack"]: r for r in results}
    ratio = "pybaetyl" in by_name and "mosquitto" in by_name
    header = ["metric", *names, *(["pybaetyl / mosquitto"] if ratio else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, get, digits in ROWS:
        cells = [get(by_name[n]) for n in names]
        row = [label, *(_fmt(c, digits) for c in cells)]
        if ratio:
            a, b = get(by_name["pybaetyl"]), get(by_name["mosquitto"])
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b
            row.append(f"{a / b:.2f}" if ok else "-")
        lines.append("| " + " | ".join(row) + " |")
    for r in results:
        if "error" in r:
            lines.append(f"\n{r['stack']}: FAILED: {r['error']}")
    return "\n".join(lines)


def _python() -> str:
    """The interpreter as the command to type: ``.venv/bin/python`` from the repository."""
    try:
        return str(Path(sys.executable).relative_to(ROOT.parent))
    except ValueError:
        return sys.executable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=("devices", "cloud"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--stack", default=",".join(STACKS),
        help=f"comma-separated stacks to run, of {', '.join(STACKS)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="--duration 5 --burst 20000")
    parser.add_argument("--devices", type=int, default=10, help="device clients (default 10)")
    parser.add_argument("--inflight", type=int, default=20, help="QoS 1 in flight per device")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="total msg/s of the sustained phase (0: max)"
    )
    parser.add_argument("--duration", type=float, help="s of sustained publishing (default 20)")
    parser.add_argument("--burst", type=int, help="messages published during the outage (100000)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="payload size (default 64)")
    parser.add_argument(
        "--paced-rate", type=float, default=TARGETS["sustained_msgs_per_s"],
        help="total msg/s of the paced phase, where latency is read (default 5000, the target)",
    )  # fmt: skip
    parser.add_argument(
        "--phases", default="sustained,paced,outage", help="default: sustained,paced,outage"
    )
    parser.add_argument("--burst-timeout", type=float, default=300.0, help="s to publish the burst")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="s from cloud restart")
    parser.add_argument(
        "--drain-idle", type=float, default=15.0,
        help="s without a new arrival (after the first) that end the drain (default 15)",
    )  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--publish", action="store_true", help="also write bench/published/")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' directories")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return 0
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    args.burst = args.burst or (20_000 if args.quick else 100_000)
    args.phases = set(args.phases.split(","))
    stacks = [s for s in args.stack.split(",") if s]
    unknown = [s for s in stacks if s not in STACKS]
    if unknown:
        parser.error(f"unknown stack {', '.join(unknown)}; choose from {', '.join(STACKS)}")
    if any(s.startswith("mosquitto") for s in stacks) and not Path(MOSQUITTO).exists():
        parser.error(f"{MOSQUITTO} is missing: sudo apt-get install mosquitto")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    results: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        for name in stacks:
            workdir = root / name
            workdir.mkdir()
            stack: Stack
            if name == "pybaetyl":
                stack = PybaetylStack(workdir)
            else:
                stack = MosquittoStack(workdir, unbounded=name == "mosquitto-unbounded")
            print(f"{name}: running ({workdir})", flush=True)
            results.append(measure(stack, args, workdir))
            print(table(results[-1:]), flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(results))
    t = TARGETS
    print(f"targets: >= {t['sustained_msgs_per_s']:,.0f} msg/s sustained, p99 < "
          f"{t['p99_ms']:.0f} ms online, drain >= {t['drain_msgs_per_s']:,.0f} msg/s")  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
        cwd=ROOT,
    ).stdout.strip()  # fmt: skip
    document = {
        "date": stamp,
        "command": shlex.join([_python(), "-m", "bench.dataplane", *sys.argv[1:]]),
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "args": {k: sorted(v) if isinstance(v, set) else str(v) for k, v in vars(args).items()},
        "results": results,
    }
    out = args.out_dir / f"dataplane-{stamp}.json"
    report.write_json(out, document)
    print(f"written: {out}")
    if args.publish:
        print(f"published: {report.publish(document, out.name)}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""A scale-out cluster for tests: Mosquitto configured by ``baetyl broker export-config``, cloud
replicas (``baetyl up`` with ``bus.mode=external``) on one MariaDB database, and simulated
nodes speaking the shadow protocol with their own certificates.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge import TokenCredentials, activate
from tests.support.polling import until_blocking
from tests.support.up import BAETYL

__all__ = ["Api", "Broker", "Replica", "SimNode", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, limit: float = 10.0) -> None:
    def up() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    until_blocking(up, limit, f"port {port}")


@dataclass
class Broker:
    """Mosquitto on the files ``baetyl broker export-config --mosquitto`` wrote."""

    directory: Path
    node_port: int
    cloud_port: int
    proc: subprocess.Popen[str] | None = None

    @classmethod
    def export(cls, data_dir: Path, settings: list[str], directory: Path) -> Broker:
        node_port, cloud_port = free_port(), free_port()
        subprocess.run(
            [BAETYL, "--data-dir", str(data_dir), *settings, "broker", "export-config",
             "--mosquitto", "--out", str(directory), "--host", "127.0.0.1",
             "--node-port", str(node_port), "--cloud-port", str(cloud_port),
             "--bind", "127.0.0.1", "--operator", "ops"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        if os.geteuid() == 0:  # mosquitto started as root drops to its own user: let it read
            shutil.chown(directory / "server.key", user="mosquitto")
        return cls(directory, node_port, cloud_port)

    def start(self, mosquitto: str) -> None:
        self.proc = subprocess.Popen(
            [mosquitto, "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_port(self.node_port)
            wait_port(self.cloud_port)
        except AssertionError:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"mosquitto did not start: {err}") from None

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.communicate(timeout=10)


@dataclass
class Replica:
    """One ``baetyl up`` in external mode; ``api`` is its REST port once started."""

    name: str
    argv: list[str]
    cwd: Path
    proc: subprocess.Popen[str] | None = None
    api: int = 0
    activation: int = 0

    @property
    def log(self) -> Path:
        return self.cwd / f"replica-{self.name}.log"

    def start(self) -> None:
        with self.log.open("a") as log:  # a file, not a pipe nobody reads: it never fills up
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.api:
            line = self.proc.stdout.readline()
            if not line:
                break
            if found := re.search(r"^\s+api\s+127\.0\.0\.1:(\d+)", line):
                self.api = int(found.group(1))
            if found := re.search(r"^\s+activation\s+127\.0\.0\.1:(\d+)", line):
                self.activation = int(found.group(1))
        if not self.api:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            raise AssertionError(f"replica {self.name} did not start: {self.log.read_text()}")
        # Keep reading stdout so the process never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.api = 0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Api:
    """The REST API of one replica, with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}/v1"
        self.token = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 # http on loopback, from the test
            self.base + path, data=data, method=method
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def activate(self, name: str, state_dir: Path) -> None:
        """Create nothing: activate node ``name`` from its install command into ``state_dir``."""
        status, init = self.call("GET", f"/nodes/{name}/init")
        assert status == 200, init
        argv = shlex.split(init["cmd"])
        options = dict(zip(argv[3::2], argv[4::2], strict=True))
        activate(
            options["--url"].replace("localhost", "127.0.0.1"),
            options["--ca-sha256"],
            TokenCredentials(options["--token"]),
            state_dir,
        )


@dataclass
class SimNode:
    """A node speaking the shadow protocol over mTLS from an activated state directory.

    It reports an increasing ``counter`` (one report in flight, sent again with a new token when
    no answer comes within ``answer_timeout``, as the agent does) and follows desired versions.
    """

    state_dir: Path
    answer_timeout: float = 2.0
    node_id: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    desired_version: int = 0
    desired: dict[str, Any] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)  # token -> counter
    answers: dict[str, int] = field(default_factory=dict)  # token -> answers seen
    rejected: list[int] = field(default_factory=list)
    received: list[str] = field(default_factory=list)  # topics of every message
    counter: int = 0
    in_flight: tuple[str, int, float] | None = None  # token, counter, sent at
    connected: threading.Event = field(default_factory=threading.Event)
    client: mqtt.Client | None = None

    def __post_init__(self) -> None:
        info = json.loads((self.state_dir / "node.json").read_text())
        self.node_id = info["nodeId"]
        self.port = int(info["broker"]["port"])

    def connect(self, client_id: str | None = None) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or self.node_id, clean_session=True
        )
        context = ssl.create_default_context(cafile=str(self.state_dir / "ca.crt"))
        context.load_cert_chain(self.state_dir / "node.crt", self.state_dir / "node.key")
        client.tls_set_context(context)
        session = os.urandom(6).hex()
        offline = json.dumps({"online": False, "session": session})
        client.will_set(self.topic("presence"), offline, qos=1, retain=True)
        client.on_connect = lambda c, *_a: self._on_connect(c, session)
        client.on_message = self._on_message
        client.on_disconnect = lambda *_a: self.connected.clear()
        client.connect("127.0.0.1", self.port, keepalive=5)
        client.loop_start()
        self.client = client
        until_blocking(self.connected.is_set, 10, f"{self.node_id} connected")

    def __repr__(self) -> str:
        return (
            f"SimNode({self.node_id}, counter={self.counter}, in_flight={self.in_flight}, "
            f"accepted={len(self.accepted)}, rejected={self.rejected})"
        )

    def topic(self, channel: str) -> str:
        return f"$baetyl/node/{self.node_id}/{channel}"

    def _on_connect(self, client: mqtt.Client, session: str) -> None:
        channels = ("desire", "delta", "report/accepted", "report/rejected", "desire/rejected")
        client.subscribe([(self.topic(c), 1) for c in channels])
        online = json.dumps({"online": True, "session": session})
        client.publish(self.topic("presence"), online, qos=1, retain=True)
        client.publish(self.topic("desire/get"), json.dumps({"clientToken": "get"}), qos=1)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        channel = message.topic[len(self.topic("")) :]
        with self.lock:
            self.received.append(message.topic)
            if channel == "desire" and body["version"] > self.desired_version:
                self.desired_version, self.desired = body["version"], body["desired"]
            token = body.get("clientToken", "")
            if channel.startswith("report/"):
                self.answers[token] = self.answers.get(token, 0) + 1
            if channel == "report/accepted" and self.in_flight and self.in_flight[0] == token:
                self.accepted[token] = self.in_flight[1]
                self.in_flight = None
            elif channel == "report/rejected" and self.in_flight and self.in_flight[0] == token:
                self.rejected.append(int(body.get("code", 0)))
                self.in_flight = (self.in_flight[0], self.in_flight[1], 0.0)  # resend soon

    def tick(self, advance: bool) -> None:
        """Send the next report (``advance``: a new counter value) or resend one unanswered."""
        with self.lock:
            now = time.monotonic()
            if self.in_flight is not None:
                if now - self.in_flight[2] < self.answer_timeout:
                    return
                counter = self.in_flight[1]  # no answer: send it again, with a new token
            elif advance:
                self.counter += 1
                counter = self.counter
            else:
                return
            token = f"r{counter}-{os.urandom(4).hex()}"
            self.in_flight = (token, counter, now)
        assert self.client is not None
        body = {"clientToken": token, "reported": {"counter": counter}}
        self.client.publish(self.topic("report"), json.dumps(body), qos=1)

    def settled(self) -> bool:
        with self.lock:
            return self.in_flight is None

    def drop(self) -> None:
        """Lose the connection without DISCONNECT: the broker publishes the Last Will."""
        assert self.client is not None
        sock = self.client.socket()
        self.client.loop_stop()
        if isinstance(sock, socket.socket):  # an SSLSocket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.connected.clear()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

"""What the data plane's end-to-end tests share: a node broker run by a real agent, devices
(paho and the Mosquitto clients) on it, and the cloud's side (an operator's ``mosquitto_sub``,
a service's paho client).

A node broker is the system app of a real ``baetyl edge run --node-broker on`` (the
``start_agent`` fixture of tests/conftest.py, which stops the agent and every app it left —
the broker among them — after the test). Devices are made through the API; a device is
connected by polling until its node broker knows it (the agent fetches the device, writes the
broker's config, the broker re-reads it), so no test sleeps.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from certs import build_csr, generate_private_key, write_private_file, write_public_file
from certs.keys import private_key_pem
from shadow import downlink, uplink
from tests.broker.clients import MosquittoSub, MqttClient
from tests.broker.helpers import HOST, Creds
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until
from tests.support.tools import require_tool

NODE = "gw-1"
NODE_ID = "default.gw-1"
START = 90.0  # seconds an agent may take to run its node broker on a loaded machine
ARRIVE = 30.0  # seconds a message may take through the node, its routes and the cloud
# CONNACK return codes as paho reports them for MQTT 3.1.1
IDENTIFIER_REJECTED, BAD_PASSWORD, NOT_AUTHORIZED = 133, 134, 135

StartAgent = Callable[..., subprocess.Popen[str]]


def free_port() -> int:
    """A TCP port free on loopback now (the node broker binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# Every device's telemetry to the cloud, on the nodes of site x (the tests' nodes).
TELEMETRY_UP: dict[str, Any] = {
    "name": "telemetry-up",
    "selector": "site=x",
    "source": {"local": "devices/+/telemetry"},
    "target": {"cloud": "telemetry/{device}"},
    "qos": 1,
}


def up(rest: str, node_id: str = NODE_ID) -> str:
    """The cloud topic a route's cloud target ``rest`` lands on."""
    return uplink(node_id, rest)


def down(rest: str, node_id: str = NODE_ID) -> str:
    """The cloud topic a service sends the node ``rest`` on."""
    return downlink(node_id, rest)


# -- the node ------------------------------------------------------------------------------------


@dataclass
class NodeBroker:
    """A node broker a real agent runs: its port, the agent, the files the agent keeps."""

    state: Path
    port: int
    agent: subprocess.Popen[str]
    options: tuple[str, ...]  # the agent's options (the next agent of the node takes them too)

    @property
    def device_ca(self) -> Path:
        """The device CA the agent got with the broker's certificate (devices verify with it)."""
        return self.state / "nodebroker" / "device-ca.crt"

    def status(self) -> dict[str, Any]:
        """The broker's status.json ({} before it wrote one)."""
        try:
            return dict(json.loads((self.state / "nodebroker" / "status.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    async def refused(self, reason: str, at_least: int = 1) -> dict[str, int]:
        """The broker's refusal counts once ``reason``'s is ``at_least``."""

        def counted() -> dict[str, int] | None:
            refused = self.status().get("refused") or {}
            return dict(refused) if refused.get(reason, 0) >= at_least else None

        return await until(counted, what=f"the broker to count {at_least} {reason} refusals")

    def client(
        self,
        client_id: str,
        *,
        password: str | None = None,
        username: str | None = None,
        creds: Creds | None = None,
        clean_session: bool = True,
    ) -> MqttClient:
        """A paho client for this broker (not connected): a password device (username its
        client id unless given), or a certificate device (``creds``)."""
        client = MqttClient(
            self.port, client_id, ca=self.device_ca, creds=creds, clean_session=clean_session
        )
        if password is not None:
            client.client.username_pw_set(username or client_id, password)
        return client

    async def try_connect(self, client_id: str, **kwargs: Any) -> tuple[int, bool] | None:
        """Connect once and close: the CONNACK (code, session present), None if none came."""
        client = self.client(client_id, **kwargs)
        try:
            return await asyncio.to_thread(client.try_connect, 10)
        finally:
            await asyncio.to_thread(client.close)

    async def connect(self, client_id: str, **kwargs: Any) -> MqttClient:
        """A device connected (CONNACK 0), polling until the broker runs and knows it; close
        it after the test."""

        def attempt() -> MqttClient | None:
            assert self.agent.poll() is None, f"the agent exited: {self.agent.communicate()[1]}"
            if not self.device_ca.exists():
                return None
            client = self.client(client_id, **kwargs)
            result = client.try_connect(timeout=10)
            if result is not None and result[0] == 0:
                return client
            client.close()
            return None

        return await until(
            lambda: asyncio.to_thread(attempt),
            START,
            f"{client_id} to connect to the node broker",
            every=0.25,  # each refused attempt costs the broker a handshake (and scrypt)
        )

    def mosquitto(self, program: str, client_id: str, password: str, *args: str) -> list[str]:
        """``mosquitto_pub``/``mosquitto_sub`` as a password device over TLS: its argv."""
        return [
            require_tool(program), "-h", HOST, "-p", str(self.port), "-V", "mqttv311",
            "--cafile", str(self.device_ca), "-i", client_id, "-u", client_id, "-P", password,
            *args,
        ]  # fmt: skip


async def start_node_broker(start_agent: StartAgent, state: Path, *options: str) -> NodeBroker:
    """``baetyl edge run --node-broker on`` on the node activated in ``state``, the broker on a
    free port with a certificate for 127.0.0.1; returns once the broker answers a CONNECT
    (with a refusal: the probe has no credential)."""
    port = free_port()
    extra = ("--node-broker", "on", "--node-broker-port", str(port),
             "--node-broker-host", "localhost", "--node-broker-host", "127.0.0.1")  # fmt: skip
    agent = start_agent(*extra, *options, state_dir=state)
    broker = NodeBroker(state, port, agent, (*extra, *options))

    async def answers() -> bool:
        assert agent.poll() is None, f"the agent exited: {agent.communicate()[1]}"
        if not broker.device_ca.exists():
            return False
        return await broker.try_connect("probe") is not None

    await until(answers, START, "the node broker to answer", every=0.25)
    return broker


async def route_ready(api: Api, route: str, node: str = NODE) -> dict[str, Any]:
    """The route's stats once the node reports it (its router runs it: from then on, what a
    device publishes on its source is carried)."""
    return await route_stats(api, route, lambda _stats: True, node)


async def route_stats(
    api: Api, route: str, check: Callable[[dict[str, Any]], bool], node: str = NODE
) -> dict[str, Any]:
    """The route's reported stats once ``check`` holds for them."""

    async def reported() -> dict[str, Any] | None:
        routes = (await api.call("GET", f"/nodes/{node}/stats"))[1].get("routes") or {}
        stats = routes.get(route)
        return stats if isinstance(stats, dict) and check(stats) else None

    return await until(reported, START, f"route {route}'s stats to satisfy the test")


# -- devices -------------------------------------------------------------------------------------


async def password_device(api: Api, name: str, node: str = NODE, **body: Any) -> str:
    """Device ``name`` of ``node`` made with a password: the password."""
    status, answer = await api.call("POST", "/devices", {"name": name, "node": node, **body})
    assert status == 201, answer
    status, credentials = await api.call("POST", f"/devices/{name}/password")
    assert status == 201, credentials
    assert credentials["username"] == name
    return str(credentials["password"])


@dataclass(frozen=True)
class DeviceCertificate:
    creds: Creds
    serial: str  # as the API names it (lowercase hex)
    ca: bytes  # the device CA the API answered with


async def certificate_device(
    api: Api, name: str, directory: Path, node: str = NODE, *, create: bool = True
) -> DeviceCertificate:
    """Device ``name`` (made unless ``create`` is false) with a certificate: a key and CSR made
    here, signed through ``POST /v1/devices/{name}/certificates``."""
    if create:
        status, answer = await api.call("POST", "/devices", {"name": name, "node": node})
        assert status == 201, answer
    key = generate_private_key()
    csr = build_csr(key).decode()
    status, answer = await api.call("POST", f"/devices/{name}/certificates", {"csr": csr})
    assert status == 201, answer
    cert, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    write_public_file(cert, answer["certificate"].encode())
    write_private_file(key_path, private_key_pem(key))
    serial = x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
    assert format(serial, "x") == answer["serial"]
    return DeviceCertificate(Creds(name, cert, key_path, serial), answer["serial"],
                             answer["ca"].encode())  # fmt: skip


# -- the cloud's side ----------------------------------------------------------------------------


def operator_creds(cloud: RunningCloud, directory: Path, name: str = "alice") -> Creds:
    """An operator's certificate (reads every node's uplink) on disk."""
    return _issued(directory, f"operator:{name}", cloud.ca.issue_operator(name))


def service_creds(cloud: RunningCloud, directory: Path, name: str = "telemetry") -> Creds:
    """A service's certificate (reads uplinks, sends downlinks) on disk."""
    return _issued(directory, f"service:{name}", cloud.ca.issue_service(name))


def _issued(directory: Path, client_id: str, issued: Any) -> Creds:
    assert issued.private_key_pem is not None
    stem = client_id.replace(":", "_")
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    write_public_file(cert, issued.certificate_pem)
    write_private_file(key, issued.private_key_pem)
    return Creds(client_id, cert, key, issued.certificate.serial_number)


async def cloud_client(cloud: RunningCloud, creds: Creds, *topics: str) -> MqttClient:
    """A paho client of the cloud broker with ``creds``, subscribed to ``topics`` at QoS 1."""
    client = MqttClient(cloud.mqtt_port, creds.client_id, ca=cloud.ca.ca_path, creds=creds)
    await asyncio.to_thread(client.connect)
    for topic in topics:
        assert await asyncio.to_thread(client.subscribe, topic, 1) == [1]
    return client


async def cloud_sub(
    cloud: RunningCloud, operator: Creds, service: MqttClient, topic: str
) -> MosquittoSub:
    """An operator's ``mosquitto_sub -v -t topic`` on the cloud broker, once its subscription
    is in place (the service publishes probes on ``<topic>``'s node until one is printed, then
    the probes are read off). ``topic`` must match ``up("probe")``."""
    sub = MosquittoSub(cloud.mqtt_port, cloud.ca.ca_path, operator, [topic], timeout=120)
    probe = up("probe")
    await asyncio.to_thread(sub.wait_subscribed, lambda: service.publish(probe, b"p", 1), 30)
    while (line := await asyncio.to_thread(sub.line, 1.0)) is not None:
        assert line.startswith(probe), line
    return sub


async def next_line(sub: MosquittoSub) -> str:
    """The next line ``mosquitto_sub`` prints (probes skipped), failing if none comes."""
    while True:
        line = await asyncio.to_thread(sub.line, ARRIVE)
        assert line is not None, f"mosquitto_sub printed nothing within {ARRIVE} s"
        if not line.startswith(up("probe")):
            return line


async def publish(client: MqttClient, topic: str, payload: bytes, qos: int = 1) -> None:
    """Publish and, at QoS 1, wait for the PUBACK (for a device: the message is in the node's
    spool) with a limit generous for a loaded machine (``MqttClient.publish`` allows 3 s)."""

    def send() -> None:
        info = client.client.publish(topic, payload, qos=qos)
        if qos:
            info.wait_for_publish(ARRIVE)
            assert info.is_published(), f"{client.client_id}: no PUBACK for {topic}"

    await asyncio.to_thread(send)

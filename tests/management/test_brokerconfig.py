"""`baetyl broker export-config`: the data plane's topics on an external broker.

The rendered ACLs name a node's uplink (write) and downlink (read); then Mosquitto, run on the
exported files, carries a node's uplink to an operator's ``mosquitto_sub`` and a service's
downlink to the node, and keeps a node off other nodes' data and off its own uplink.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import CertificateAuthority, write_private_file, write_public_file
from management.brokerconfig import BrokerLayout, emqx_acl, mosquitto_acl
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds, issue_node
from tests.scaleout.cluster import Broker
from tests.support.tools import require_tool

NODE, OTHER = "default.n1", "default.n2"


def test_mosquitto_acl_lets_nodes_write_their_uplink_and_read_their_downlink() -> None:
    lines = mosquitto_acl(BrokerLayout("/etc/baetyl", operators=("ops",))).splitlines()
    assert "pattern write $baetyl/node/%u/up/#" in lines
    assert "pattern read $baetyl/node/%u/down/#" in lines
    # Never the other way round: no read rule names an uplink, no write rule a downlink.
    assert not any(line.startswith("pattern read") and "/up/" in line for line in lines)
    assert not any(line.startswith("pattern write") and "/down/" in line for line in lines)


def test_emqx_acl_lets_nodes_write_their_uplink_and_read_their_downlink() -> None:
    rules = emqx_acl(BrokerLayout("/etc/baetyl", operators=("ops",))).splitlines()
    publish = next(rule for rule in rules if rule.startswith("{allow, all, publish"))
    subscribe = next(rule for rule in rules if rule.startswith("{allow, all, subscribe"))
    assert '"$baetyl/node/${username}/up/#"' in publish
    assert "/down/" not in publish
    assert '"$baetyl/node/${username}/down/#"' in subscribe
    assert "/up/" not in subscribe
    operator = next(rule for rule in rules if '"operator:ops"' in rule)
    assert '"$baetyl/node/+/up/#"' in operator
    assert '"$baetyl/node/+/down/#"' in operator


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[tuple[Broker, CertificateAuthority]]:
    """Mosquitto on the files export-config wrote, and the CA it trusts."""
    binary = require_tool("mosquitto")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    # Mosquitto started as root runs as its own user, which cannot enter pytest's 0700 tmp dirs.
    directory = Path(tempfile.mkdtemp(prefix="baetyl-broker-"))
    directory.chmod(0o755)
    broker = Broker.export(data, [], directory)
    try:
        broker.start(binary)
        yield broker, CertificateAuthority.load(data / "ca")
    finally:
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _issued(directory: Path, client_id: str, cert: bytes, key: bytes | None) -> Creds:
    assert key is not None
    directory.mkdir(parents=True, exist_ok=True)
    stem = client_id.replace(":", "_")
    write_public_file(directory / f"{stem}.crt", cert)
    write_private_file(directory / f"{stem}.key", key)
    return Creds(client_id, directory / f"{stem}.crt", directory / f"{stem}.key", 0)


def test_mosquitto_carries_the_uplink_to_operators_and_the_downlink_to_the_node(
    tmp_path: Path, mosquitto: tuple[Broker, CertificateAuthority]
) -> None:
    broker, ca = mosquitto
    sub = require_tool("mosquitto_sub")
    node_creds = issue_node(ca, tmp_path / "n1", "default", "n1")
    other_creds = issue_node(ca, tmp_path / "n2", "default", "n2")
    issued = ca.issue_operator("ops")
    ops = _issued(tmp_path / "ops", "operator:ops", issued.chain_pem, issued.private_key_pem)
    issued = ca.issue_service("cloud")
    service = _issued(tmp_path / "svc", "service:cloud", issued.chain_pem, issued.private_key_pem)

    # The operator's command from PROTOCOL.md, on the node listener.
    watcher = subprocess.Popen(
        [sub, "-h", "127.0.0.1", "-p", str(broker.node_port), "-V", "mqttv311",
         "--cafile", str(ca.ca_path), "--cert", str(ops.cert), "--key", str(ops.key),
         "-t", "$baetyl/node/+/up/#", "-v", "-C", "1", "-W", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    clients: list[MqttClient] = []

    def client(port: int, creds: Creds) -> MqttClient:
        made = MqttClient(port, creds.client_id, ca=ca.ca_path, creds=creds)
        clients.append(made)
        made.connect()
        return made

    try:
        node = client(broker.node_port, node_creds)
        other = client(broker.node_port, other_creds)
        assert node.subscribe(f"$baetyl/node/{NODE}/down/#", 1) == [1]
        # Mosquitto grants these filters but delivers nothing the ACL does not let them read.
        node.subscribe(f"$baetyl/node/{NODE}/up/#", 1)
        other.subscribe(f"$baetyl/node/{NODE}/#", 1)
        other.subscribe(f"$baetyl/node/{OTHER}/down/#", 1)
        cloud = client(broker.cloud_port, service)
        assert cloud.subscribe("$baetyl/node/+/up/#", 1) == [1]

        # A node's uplink: to the operator's mosquitto_sub and to the cloud.
        node.publish(f"$baetyl/node/{NODE}/up/telemetry/thermo-1", b'{"t":21}', qos=1)
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, err
        assert out.strip() == f'$baetyl/node/{NODE}/up/telemetry/thermo-1 {{"t":21}}'
        assert cloud.receive().payload == b'{"t":21}'

        # A node cannot write another node's uplink (nor a downlink): the cloud sees nothing.
        other.publish(f"$baetyl/node/{NODE}/up/forged", b"x", qos=1)
        other.publish(f"$baetyl/node/{OTHER}/down/forged", b"x", qos=1)

        # The cloud's downlink reaches its node, and only it.
        cloud.publish(f"$baetyl/node/{NODE}/down/cmd/reboot", b"now", qos=1)
        message = node.receive()
        assert (message.topic, message.payload) == (f"$baetyl/node/{NODE}/down/cmd/reboot", b"now")
        assert node.drain() == []  # not its own uplink
        assert other.drain() == []  # not another node's data, not a forged downlink
        assert cloud.drain() == []  # not the forged uplink
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
        for made in clients:
            made.close()

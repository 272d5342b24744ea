"""Who the node broker admits at CONNECT: devices by certificate or password, its own agent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certs import CertificateAuthority, Identity
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds
from tests.broker.node.helpers import NODE, NodeBrokerProcess, NodePki, base_config, device_entry
from tests.support.polling import until_blocking

Start = Callable[[dict[str, Any]], NodeBrokerProcess]
CONNACK_IDENTIFIER_REJECTED = 133  # paho's v5 codes for the 3.1.1 return codes 2, 4, 5
CONNACK_BAD_CREDENTIALS = 134
CONNACK_NOT_AUTHORIZED = 135


def client(
    broker: NodeBrokerProcess,
    pki: NodePki,
    client_id: str,
    creds: Creds | None = None,
    *,
    password: tuple[str, str] | None = None,
) -> MqttClient:
    mqtt = MqttClient(broker.port, client_id, ca=pki.ca_file, creds=creds)
    if password is not None:
        mqtt.client.username_pw_set(*password)
    return mqtt


def connack(mqtt: MqttClient) -> int | None:
    try:
        result = mqtt.try_connect()
        return None if result is None else result[0]
    finally:
        mqtt.close()


@pytest.fixture
def devices(node_pki: NodePki) -> dict[str, Creds]:
    return {
        "thermo-1": node_pki.device("thermo-1"),
        "other": node_pki.device("thermo-1", node="gw-2"),
    }


def test_device_certificate_connects_and_publishes(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path, devices: dict[str, Creds]
) -> None:
    creds = devices["thermo-1"]
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("thermo-1", certificates=[creds.serial])])
    )
    agent = client(broker, node_pki, NODE, node_pki.agent)
    device = client(broker, node_pki, "thermo-1", creds)
    try:
        agent.connect()
        assert agent.subscribe("devices/#", 1) == [1]
        device.connect()
        device.publish("devices/thermo-1/status", b"ok", qos=1)
        message = agent.receive_on("devices/thermo-1/status")
        assert message.payload == b"ok"
    finally:
        device.close()
        agent.close()
    status = until_blocking(
        lambda: (s := broker.status()) and s["devices"]["thermo-1"]["since"] and s
    )
    assert set(status) == {"devices", "spool", "refused"}


def test_password_device_and_wrong_password(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("pw-1", password="s3cret")])
    )
    good = client(broker, node_pki, "pw-1", password=("pw-1", "s3cret"))
    try:
        good.connect()
        good.publish("devices/pw-1/status", b"x", qos=1)
    finally:
        good.close()
    assert (
        connack(client(broker, node_pki, "pw-1", password=("pw-1", "wrong")))
        == CONNACK_BAD_CREDENTIALS
    )
    assert (
        connack(client(broker, node_pki, "pw-1", password=("nobody", "s3cret")))
        == CONNACK_BAD_CREDENTIALS
    )
    # No certificate and no username: not authorized.
    assert connack(client(broker, node_pki, "pw-1")) == CONNACK_NOT_AUTHORIZED
    # The password's device under another client id.
    assert (
        connack(client(broker, node_pki, "pw-2", password=("pw-1", "s3cret")))
        == CONNACK_IDENTIFIER_REJECTED
    )
    # The status file is rewritten at most every 0.5 s: wait for the last refusal to be in it.
    expected = {"bad-password": 2, "not-authorized": 1, "client-id": 1}
    until_blocking(lambda: (s := broker.status()) and s["refused"] == expected, what=str(expected))
    assert not any("s3cret" in line or "wrong" in line for line in broker.log)  # never logged


def test_refusals_by_certificate(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path, devices: dict[str, Creds]
) -> None:
    creds = devices["thermo-1"]
    unlisted = node_pki.device("thermo-1")
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("thermo-1", certificates=[creds.serial])])
    )
    # A device of another node, though it has the same name.
    assert connack(client(broker, node_pki, "thermo-1", devices["other"])) == CONNACK_NOT_AUTHORIZED
    # A certificate of this device whose serial is not listed.
    assert connack(client(broker, node_pki, "thermo-1", unlisted)) == CONNACK_NOT_AUTHORIZED
    # A device certificate under another client id.
    assert connack(client(broker, node_pki, "thermo-2", creds)) == CONNACK_IDENTIFIER_REJECTED
    # Cloud-CA certificates that are not this node's: another node, an operator.
    other = node_pki.cloud_node("acme", "gw-2")
    assert connack(client(broker, node_pki, other.client_id, other)) == CONNACK_NOT_AUTHORIZED
    operator = node_pki.cloud_operator("alice")
    assert connack(client(broker, node_pki, "operator:alice", operator)) == CONNACK_NOT_AUTHORIZED
    # The agent under another client id than the node id.
    assert (
        connack(client(broker, node_pki, "acme.gw-9", node_pki.agent))
        == CONNACK_IDENTIFIER_REJECTED
    )
    # Each CA vouches for its own kind only: a node certificate of the device CA is no agent,
    # a device certificate of the cloud CA no device.
    fake_agent = node_pki.issue(node_pki.device_ca, Identity.node("acme", "gw-1"))
    assert connack(client(broker, node_pki, NODE, fake_agent)) == CONNACK_NOT_AUTHORIZED
    fake_device = node_pki.issue(node_pki.cloud_ca, Identity.device("acme", "gw-1", "thermo-1"))
    assert connack(client(broker, node_pki, "thermo-1", fake_device)) == CONNACK_NOT_AUTHORIZED
    expected = {"other-node": 2, "unlisted-certificate": 1, "client-id": 2, "not-authorized": 3}
    until_blocking(lambda: (s := broker.status()) and s["refused"] == expected, what=str(expected))


def test_certificate_of_another_ca_fails_the_handshake(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    """Client certificates are optional at the TLS layer, but one that is sent must verify: a
    certificate of a foreign CA is refused in the handshake, not ignored (which would fall back
    to the password)."""
    foreign_ca = CertificateAuthority.init(tmp_path / "foreign-ca")
    foreign = node_pki.issue(foreign_ca, Identity.device("acme", "gw-1", "pw-1"))
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("pw-1", password="s3cret")])
    )
    mqtt = client(broker, node_pki, "pw-1", foreign, password=("pw-1", "s3cret"))
    assert connack(mqtt) is None  # no CONNACK: the handshake failed
    until_blocking(
        lambda: (s := broker.status()) and s["refused"] == {"unknown-ca": 1}, what="unknown-ca"
    )

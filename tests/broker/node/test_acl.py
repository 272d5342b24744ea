"""Per-device topics on the node broker, the agent's $ topics, local clients, config changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.broker.clients import MqttClient
from tests.broker.helpers import QUIET, WAIT
from tests.broker.node.helpers import NODE, NodeBrokerProcess, NodePki, base_config, device_entry
from tests.support.polling import until_blocking

Start = Callable[[dict[str, Any]], NodeBrokerProcess]
REFUSED = 0x80


def test_device_publish_and_subscribe_refusals(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    creds = node_pki.device("d1")
    entry = device_entry(
        "d1",
        publish=["devices/d1/telemetry"],
        subscribe=["devices/d1/commands/#"],
        certificates=[creds.serial],
    )
    broker = start_node_broker(base_config(node_pki, tmp_path, [entry]))
    agent = MqttClient(broker.port, NODE, ca=node_pki.ca_file, creds=node_pki.agent)
    device = MqttClient(broker.port, "d1", ca=node_pki.ca_file, creds=creds)
    try:
        agent.connect()
        assert agent.subscribe("#", 1) == [1]
        assert agent.subscribe("$baetyl/broker/#", 0) == [0]  # the agent's alone
        device.connect()
        assert device.subscribe("devices/d1/commands/+", 1) == [1]  # covered
        assert device.subscribe("devices/d1/#", 1) == [REFUSED]  # wider than allowed
        assert device.subscribe("devices/+/commands/#", 1) == [REFUSED]
        assert device.subscribe("#", 1) == [REFUSED]
        assert device.subscribe("$baetyl/broker/spool", 0) == [REFUSED]
        # A refused PUBLISH is still acknowledged (MQTT 3.1.1 has no negative PUBACK)...
        device.publish("devices/d2/telemetry", b"forged", qos=1)
        device.publish("$baetyl/broker/spool", b"{}", qos=1)
        device.publish("devices/d1/telemetry", b"fine", qos=1)
        # ...and reaches nobody: the agent receives the allowed one only.
        received = [m for m in agent.drain() if not m.topic.startswith("$")]
        assert [(m.topic, m.payload) for m in received] == [("devices/d1/telemetry", b"fine")]
        agent.publish("devices/d1/commands/reboot", b"now", qos=1)
        assert device.receive().payload == b"now"
    finally:
        device.close()
        agent.close()
    # Refusals are logged once per interval per client, the ones after it counted.
    assert any("denied subscription of 'devices/d1/#' to d1" in line for line in broker.log)


def test_local_listener_clients(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    broker = start_node_broker(base_config(node_pki, tmp_path, [device_entry("d1")]))
    local = MqttClient(broker.local_port, "app-1", ca=None)
    impostor = MqttClient(broker.local_port, "d1", ca=None)
    try:
        local.connect()
        assert local.subscribe("devices/#", 1) == [1]
        assert local.subscribe("$baetyl/broker/spool", 0) == [REFUSED]
        local.publish("devices/app/x", b"1", qos=1)
        assert local.receive().topic == "devices/app/x"
        # A device's client id is not a local client's to take.
        result = impostor.try_connect()
        assert result is not None
        assert result[0] == 133
    finally:
        impostor.close()
        local.close()


def test_config_change_cuts_revoked_devices(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    cert_dev, cert_kept = node_pki.device("c1"), node_pki.device("c2")
    devices = [
        device_entry("c1", certificates=[cert_dev.serial]),
        device_entry("c2", certificates=[cert_kept.serial]),
        device_entry("p1", password="one"),
        device_entry("gone", password="two"),
    ]
    config = base_config(node_pki, tmp_path, devices)
    broker = start_node_broker(config)
    clients = {
        "c1": MqttClient(broker.port, "c1", ca=node_pki.ca_file, creds=cert_dev),
        "c2": MqttClient(broker.port, "c2", ca=node_pki.ca_file, creds=cert_kept),
        "p1": MqttClient(broker.port, "p1", ca=node_pki.ca_file),
        "gone": MqttClient(broker.port, "gone", ca=node_pki.ca_file),
    }
    clients["p1"].client.username_pw_set("p1", "one")
    clients["gone"].client.username_pw_set("gone", "two")
    try:
        for mqtt in clients.values():
            mqtt.connect()
        assert clients["c2"].subscribe("devices/c2/#", 1) == [1]
        changed = [
            device_entry("c1", certificates=[]),  # its serial unlisted
            device_entry("c2", subscribe=["devices/c2/only/#"], certificates=[cert_kept.serial]),
            device_entry("p1", password="changed"),  # its password hash changed
        ]  # and "gone" removed
        broker.reconfigure(base_config(node_pki, tmp_path, changed))
        for name in ("c1", "p1", "gone"):
            assert clients[name].disconnected.wait(WAIT), f"{name} was not cut"
        # The device kept online had its subscription re-checked against its new filters.
        assert not clients["c2"].disconnected.wait(QUIET)
        agent = MqttClient(broker.port, NODE, ca=node_pki.ca_file, creds=node_pki.agent)
        try:
            agent.connect()
            agent.publish("devices/c2/x", b"no longer", qos=1)
            agent.publish("devices/c2/only/x", b"yes", qos=1)
        finally:
            agent.close()
        assert [m.payload for m in clients["c2"].drain()] == []
        # The cut device cannot come back.
        again = MqttClient(broker.port, "c1", ca=node_pki.ca_file, creds=cert_dev)
        try:
            result = again.try_connect()
            assert result is not None
            assert result[0] == 135
        finally:
            again.close()
    finally:
        for mqtt in clients.values():
            mqtt.close()


def test_offline_device_queue_is_bounded(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    creds = node_pki.device("q1")
    config = base_config(
        node_pki, tmp_path, [device_entry("q1", certificates=[creds.serial])], maxQueuedPerSession=5
    )
    broker = start_node_broker(config)
    device = MqttClient(broker.port, "q1", ca=node_pki.ca_file, creds=creds, clean_session=False)
    agent = MqttClient(broker.port, NODE, ca=node_pki.ca_file, creds=node_pki.agent)
    try:
        device.connect()
        assert device.subscribe("devices/q1/cmd", 1) == [1]
        device.close()
        agent.connect()
        for index in range(12):
            agent.publish("devices/q1/cmd", str(index).encode(), qos=1)
        device = MqttClient(
            broker.port, "q1", ca=node_pki.ca_file, creds=creds, clean_session=False
        )
        assert device.connect() is True  # session present
        payloads = [m.payload for m in device.drain()]
        assert payloads == [str(i).encode() for i in range(7, 12)]  # the newest 5
    finally:
        device.close()
        agent.close()


def test_removed_device_loses_its_offline_session(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    creds = node_pki.device("q2")
    entry = device_entry("q2", certificates=[creds.serial])
    broker = start_node_broker(base_config(node_pki, tmp_path, [entry]))

    def connect() -> bool:
        device = MqttClient(
            broker.port, "q2", ca=node_pki.ca_file, creds=creds, clean_session=False
        )
        try:
            return device.connect()
        finally:
            device.close()

    assert connect() is False
    assert connect() is True  # the persistent session is kept while the device is offline
    broker.reconfigure(base_config(node_pki, tmp_path, []))
    until_blocking(lambda: (s := broker.status()) and s["devices"] == {}, what="the removal")
    broker.reconfigure(base_config(node_pki, tmp_path, [entry]))
    until_blocking(lambda: (s := broker.status()) and "q2" in s["devices"], what="the device back")
    assert connect() is False  # a new device of the same name starts afresh

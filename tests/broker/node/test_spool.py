"""The spool: routed messages on disk before their PUBACK, bounded, drops counted per route."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.node.core import MAX_HELD
from tests.broker.clients import MqttClient, require_mosquitto
from tests.broker.helpers import HOST, QUIET, WAIT
from tests.broker.node.helpers import NODE, NodeBrokerProcess, NodePki, base_config, device_entry
from tests.support.polling import until_blocking

Start = Callable[[dict[str, Any]], NodeBrokerProcess]


def rows(db: Path) -> list[tuple[int, str, str, int, bytes]]:
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(
            "SELECT id, topic, device, qos, payload FROM messages ORDER BY id"
        ).fetchall()


def drops(db: Path) -> dict[str, int]:
    with sqlite3.connect(db, timeout=10) as conn:
        return dict(conn.execute("SELECT route, count FROM drops").fetchall())


def test_acknowledged_messages_survive_sigkill(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    creds = node_pki.device("d1")
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("d1", certificates=[creds.serial])])
    )
    device = MqttClient(broker.port, "d1", ca=node_pki.ca_file, creds=creds)
    try:
        device.connect()
        device.publish("devices/d1/status", b"not routed", qos=1)
        device.publish("devices/d1/telemetry", b"t-1", qos=1)  # returns on the PUBACK
        broker.kill()  # SIGKILL right after it
    finally:
        device.close()
    assert rows(tmp_path / "spool.db") == [(1, "devices/d1/telemetry", "d1", 1, b"t-1")]


def test_mosquitto_pub_burst_is_all_spooled_in_order(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    require_mosquitto()
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("pw", password="pw-secret")])
    )
    lines = "\n".join(f"m-{i}" for i in range(500))
    result = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            HOST,
            "-p",
            str(broker.port),
            "-V",
            "mqttv311",
            "--cafile",
            str(node_pki.ca_file),
            "-i",
            "pw",
            "-u",
            "pw",
            "-P",
            "pw-secret",
            "-t",
            "devices/pw/telemetry",
            "-q",
            "1",
            "-l",
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    broker.kill()  # every message mosquitto_pub had acknowledged is on disk
    found = rows(tmp_path / "spool.db")
    assert [r[4] for r in found] == [f"m-{i}".encode() for i in range(500)]
    assert {r[2] for r in found} == {"pw"}


def test_local_clients_spool_and_agent_is_told(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    broker = start_node_broker(base_config(node_pki, tmp_path, []))
    agent = MqttClient(broker.port, NODE, ca=node_pki.ca_file, creds=node_pki.agent)
    local = MqttClient(broker.local_port, "app", ca=None)
    try:
        agent.connect()
        assert agent.subscribe("$baetyl/broker/spool", 0) == [0]
        local.connect()
        local.publish("devices/app/telemetry", b"from a local app", qos=1)
        notice = agent.receive_on("$baetyl/broker/spool")
        assert json.loads(notice.payload) == {"last": 1}
        # The agent's own publishes are never spooled (it forwards what it read from there).
        agent.publish("devices/agent/telemetry", b"no", qos=1)
    finally:
        local.close()
        agent.close()
    assert [(r[2], r[4]) for r in rows(tmp_path / "spool.db")] == [("local", b"from a local app")]


def test_bounds_delete_oldest_and_count_drops_per_route(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    config = base_config(node_pki, tmp_path, [])
    config["spool"] |= {
        "maxBytes": 1000,
        "routes": {"behind": "devices/+/telemetry", "caught-up": "devices/#", "other": "x/#"},
    }
    broker = start_node_broker(config)
    db = tmp_path / "spool.db"
    with sqlite3.connect(db, timeout=10) as conn:  # the agent's cursors
        conn.execute("INSERT INTO cursors (route, last_id) VALUES ('caught-up', 5)")
    local = MqttClient(broker.local_port, "app", ca=None)
    try:
        local.connect()
        for index in range(20):
            local.publish("devices/app/telemetry", bytes([index]) * 100, qos=1)
    finally:
        local.close()
    # 2,000 bytes for a bound of 1,000: the 10 oldest go; "caught-up" had read up to id 5.
    until_blocking(lambda: len(rows(db)) == 10, what="the oldest rows deleted")
    assert [r[0] for r in rows(db)] == list(range(11, 21))
    assert drops(db) == {"behind": 10, "caught-up": 5}
    status = until_blocking(lambda: (s := broker.status()) and s["spool"]["rows"] == 10 and s)
    assert status["spool"] == {"rows": 10, "bytes": 1000}


def test_age_bound(node_pki: NodePki, start_node_broker: Start, tmp_path: Path) -> None:
    config = base_config(node_pki, tmp_path, [])
    config["spool"] |= {"maxAgeSeconds": 0.5}
    broker = start_node_broker(config)
    local = MqttClient(broker.local_port, "app", ca=None)
    try:
        local.connect()
        local.publish("devices/app/telemetry", b"old", qos=1)
    finally:
        local.close()
    db = tmp_path / "spool.db"
    until_blocking(lambda: not rows(db), what="the expired row deleted")
    assert drops(db) == {"telemetry-up": 1}


def test_puback_waits_for_the_commit(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    """While the agent's side holds the database's write lock, no PUBACK; once it lets go, the
    message is committed, then acknowledged (busy timeout, not an error)."""
    broker = start_node_broker(base_config(node_pki, tmp_path, []))
    local = MqttClient(broker.local_port, "app", ca=None)
    agent_side = sqlite3.connect(tmp_path / "spool.db", timeout=10, isolation_level=None)
    try:
        local.connect()
        agent_side.execute("BEGIN IMMEDIATE")  # as the agent deleting rows would
        info = local.client.publish("devices/app/telemetry", b"waits", qos=1)
        info.wait_for_publish(QUIET)
        assert not info.is_published()  # nothing acknowledged while not on disk
        agent_side.execute("COMMIT")
        info.wait_for_publish(WAIT)
        assert info.is_published()
    finally:
        agent_side.close()
        local.close()
    assert [r[4] for r in rows(tmp_path / "spool.db")] == [b"waits"]


def test_mosquitto_sub_device_receives_its_commands(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    require_mosquitto()
    broker = start_node_broker(
        base_config(node_pki, tmp_path, [device_entry("sub", password="pw")])
    )
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            HOST,
            "-p",
            str(broker.port),
            "-V",
            "mqttv311",
            "--cafile",
            str(node_pki.ca_file),
            "-i",
            "sub",
            "-u",
            "sub",
            "-P",
            "pw",
            "-t",
            "devices/sub/commands",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agent = MqttClient(broker.port, NODE, ca=node_pki.ca_file, creds=node_pki.agent)
    try:
        agent.connect()

        # Published until the subscriber has subscribed and taken one (it exits after one).
        def delivered() -> bool:
            agent.publish("devices/sub/commands", b"reboot", qos=1)
            return sub.poll() is not None

        until_blocking(delivered, what="mosquitto_sub to receive the command")
        out, err = sub.communicate(timeout=10)
    finally:
        agent.close()
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, err
    assert out.strip() == "reboot"


def test_client_not_waiting_for_pubacks_is_paused_then_resumed(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    """More unacknowledged messages than a connection may hold (MAX_HELD) while the spool cannot
    commit: the broker stops reading that client, and once the spool commits every message is
    acknowledged and on disk, in order."""
    count = MAX_HELD + 2_000
    broker = start_node_broker(base_config(node_pki, tmp_path, []))
    local = MqttClient(broker.local_port, "flood", ca=None)
    local.client.max_inflight_messages_set(count)
    agent_side = sqlite3.connect(tmp_path / "spool.db", timeout=10, isolation_level=None)
    try:
        local.connect()
        agent_side.execute("BEGIN IMMEDIATE")
        infos = [
            local.client.publish("devices/flood/telemetry", str(i).encode(), qos=1)
            for i in range(count)
        ]
        assert not any(info.is_published() for info in infos)
        agent_side.execute("COMMIT")
        until_blocking(lambda: all(i.is_published() for i in infos), limit=60, what="all PUBACKs")
    finally:
        agent_side.close()
        local.close()
    assert [r[4] for r in rows(tmp_path / "spool.db")] == [str(i).encode() for i in range(count)]
    assert any("flood: 10001 acknowledgements wait for the spool" in line for line in broker.log)

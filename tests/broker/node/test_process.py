"""The node broker as a process: its configuration, status file, signals and exit codes."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certs import write_private_file, write_public_file
from tests.broker.clients import MqttClient
from tests.broker.helpers import HOST, peer_serial
from tests.broker.node.helpers import (
    NodeBrokerProcess,
    NodePki,
    base_config,
    device_entry,
    write_config,
)
from tests.support.polling import until_blocking

Start = Callable[[dict[str, Any]], NodeBrokerProcess]


def run_with(tmp_path: Path, config: object) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return subprocess.run(
        [sys.executable, "-m", "broker.node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda c: "{not json", "is not JSON"),
        (lambda c: c | {"extra": 1}, "unknown keys 'extra'"),
        (lambda c: c | {"node": "gw-1"}, "'node' is 'gw-1'"),
        (lambda c: c | {"devices": [device_entry("d", publish=["a/#/b"])]}, "devices[0].publish"),
        (
            lambda c: c | {"devices": [device_entry("d", subscribe=["$baetyl/#"])]},
            "devices[0].subscribe",
        ),
        (
            lambda c: c | {"devices": [device_entry("d") | {"passwordHash": "md5$x"}]},
            "passwordHash",
        ),
        (lambda c: c | {"local": {"host": "192.0.2.1", "port": 1}}, "local.host"),
        (lambda c: c | {"maxQueuedPerSession": 0}, "maxQueuedPerSession"),
        (lambda c: c | {"tls": c["tls"] | {"cert": "missing.crt"}}, "missing.crt"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    node_pki: NodePki, tmp_path: Path, change: Callable[[dict[str, Any]], object], says: str
) -> None:
    result = run_with(tmp_path, change(base_config(node_pki, tmp_path, [])))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("node broker: ")
    assert says in lines[0]


def test_sigterm_exits_0_and_status_lists_devices(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    broker = start_node_broker(base_config(node_pki, tmp_path, [device_entry("never-seen")]))
    status = until_blocking(broker.status, what="status.json")
    assert status["devices"] == {"never-seen": {"online": False, "since": None}}
    assert status["spool"] == {"rows": 0, "bytes": 0}
    local = MqttClient(broker.local_port, "app", ca=None)
    try:
        local.connect()
        assert broker.terminate() == 0
        assert local.disconnected.wait(5)  # its session was closed
    finally:
        local.close()
    assert "node broker stopped" in broker.log[-1]


def test_reload_on_sighup_and_bad_reload_keeps_previous(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    broker = start_node_broker(base_config(node_pki, tmp_path, []))
    # A broken file: logged, the previous configuration kept.
    (tmp_path / "config.json").write_text("{broken")
    until_blocking(lambda: any("Keeping the previous configuration" in line for line in broker.log))
    # Written back with a device, applied (and SIGHUP forces a re-read too).
    write_config(
        tmp_path / "config.json",
        base_config(node_pki, tmp_path, [device_entry("new", password="pw")]),
    )
    broker.process.send_signal(signal.SIGHUP)
    until_blocking(lambda: (s := broker.status()) and "new" in s["devices"], what="the new device")
    device = MqttClient(broker.port, "new", ca=node_pki.ca_file)
    device.client.username_pw_set("new", "pw")
    try:
        device.connect()
    finally:
        device.close()
    assert broker.terminate() == 0


def test_rotated_server_certificate_serves_new_connections(
    node_pki: NodePki, start_node_broker: Start, tmp_path: Path
) -> None:
    """The agent renews the server certificate in place: new connections get the new one."""
    files = tmp_path / "tls"
    files.mkdir()
    config = base_config(node_pki, tmp_path, [device_entry("d", password="pw")])
    config["tls"] |= {"cert": "tls/server.crt", "key": "tls/server.key"}

    def issue() -> int:
        server = node_pki.device_ca.issue_server(
            "broker.acme.gw-1", dns_names=["localhost"], ip_addresses=[ipaddress.ip_address(HOST)]
        )
        assert server.private_key_pem is not None
        write_private_file(files / "server.key.tmp", server.private_key_pem)
        write_public_file(files / "server.crt.tmp", server.chain_pem)
        os.replace(files / "server.key.tmp", files / "server.key")
        os.replace(files / "server.crt.tmp", files / "server.crt")
        return server.certificate.serial_number

    first = issue()
    broker = start_node_broker(config)

    def served() -> int:
        device = MqttClient(broker.port, "d", ca=node_pki.ca_file)
        device.client.username_pw_set("d", "pw")
        try:
            device.connect()
            return peer_serial(device.client.socket())
        finally:
            device.close()

    assert served() == first
    second = issue()
    until_blocking(lambda: served() == second, what="the new certificate served")

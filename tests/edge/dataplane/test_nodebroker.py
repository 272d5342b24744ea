"""The node broker as the agent decides it: when it runs, its config.json, its system app."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.dataplane.nodebroker import (
    BROKER_APP,
    CONTAINER_DIR,
    NodeBrokerFiles,
    NodeBrokerMode,
    NodeBrokerSettings,
    broker_config,
    broker_wanted,
    system_app,
)
from edge.engines.manifests import render
from edge.engines.plan import Plan
from edge.errors import EdgeError
from tests.edge.test_manifests import _validated  # the OpenAPI models, losslessly

DEVICE = {
    "name": "thermo-1",
    "publish": ["devices/thermo-1/telemetry"],
    "subscribe": ["devices/thermo-1/commands/#"],
    "passwordHash": "scrypt$16384$8$1$c2FsdA==$aGFzaA==",
    "certificates": ["1f3a"],
}
UP = {
    "name": "telemetry-up",
    "source": {"local": "devices/+/telemetry"},
    "function": None,
    "target": {"cloud": "telemetry/{device}"},
    "qos": 1,
}
DOWN = {
    "name": "commands-down",
    "source": {"cloud": "cmd/#"},
    "function": None,
    "target": {"local": "devices/{1}/commands"},
    "qos": 1,
}


@pytest.mark.parametrize(
    ("mode", "desired", "wanted"),
    [
        (NodeBrokerMode.AUTO, {"apps": []}, False),
        (NodeBrokerMode.AUTO, {"apps": [], "devices": []}, False),
        (NodeBrokerMode.AUTO, {"devices": [{"name": "d", "version": "1"}]}, True),
        (NodeBrokerMode.AUTO, {"routes": [{"name": "r", "version": "1"}]}, True),
        (NodeBrokerMode.ON, {}, True),
        (NodeBrokerMode.OFF, {"devices": [{"name": "d", "version": "1"}]}, False),
        (NodeBrokerMode.AUTO, {"devices": "not a list"}, False),
    ],
)
def test_the_broker_runs_when_asked_or_when_a_device_or_route_is_desired(
    mode: NodeBrokerMode, desired: dict[str, Any], wanted: bool
) -> None:
    assert broker_wanted(mode, desired) is wanted


def test_config_names_devices_and_spools_the_local_sources_of_routes() -> None:
    settings = NodeBrokerSettings(
        port=50110, bind="127.0.0.1", local_port=50111, spool_max_bytes=1024, spool_max_age=60.0
    )
    other = {**DEVICE, "name": "a-dev", "passwordHash": None, "certificates": []}
    config = broker_config(
        node_id="acme.gw-1", settings=settings, devices=[DEVICE, other], routes=[UP, DOWN]
    )
    assert config == {
        "node": "acme.gw-1",
        "listen": {"host": "127.0.0.1", "port": 50110},
        "local": {"host": "127.0.0.1", "port": 50111},
        "tls": {
            "cert": "server.crt",
            "key": "server.key",
            "deviceCa": "device-ca.crt",
            "cloudCa": "ca.crt",
        },
        "devices": [  # sorted by name
            {
                "name": "a-dev",
                "publish": DEVICE["publish"],
                "subscribe": DEVICE["subscribe"],
                "passwordHash": None,
                "certificates": [],
            },
            DEVICE,
        ],
        # the downlink route spools nothing: its messages come from the cloud
        "spool": {
            "path": "spool.db",
            "routes": {"telemetry-up": "devices/+/telemetry"},
            "maxBytes": 1024,
            "maxAgeSeconds": 60.0,
        },
        "status": "status.json",
        "maxQueuedPerSession": 1000,
    }
    assert (
        broker_config(node_id="n", settings=NodeBrokerSettings(), devices=[], routes=[])["local"]
        is None
    )


def test_config_is_written_0600_and_only_when_it_changed(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("the cloud CA")
    files = NodeBrokerFiles(tmp_path)
    files.ensure()
    assert files.cloud_ca.read_text() == "the cloud CA"  # the broker verifies the agent with it
    config = broker_config(node_id="n", settings=NodeBrokerSettings(), devices=[DEVICE], routes=[])
    assert files.write_config(config) is True
    assert stat.S_IMODE(files.config.stat().st_mode) == 0o600  # password hashes
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
    assert json.loads(files.config.read_text()) == config
    assert files.write_config(config) is False  # the same: the broker is not made to re-read
    config["devices"] = []
    assert files.write_config(config) is True
    assert json.loads(files.config.read_text())["devices"] == []
    assert [p.name for p in files.root.iterdir() if p.name.endswith(".tmp")] == []


def test_native_system_app_runs_the_broker_module_with_the_config(tmp_path: Path) -> None:
    files = NodeBrokerFiles(tmp_path)
    app = system_app(files, NodeBrokerSettings(), engine="native")
    assert app.name == BROKER_APP
    plan = Plan.parse(app.spec)
    (service,) = plan.services
    assert service.argv == (sys.executable, "-m", "broker.node", "--config",
                            str((tmp_path / "nodebroker" / "config.json").absolute()))  # fmt: skip
    assert plan.replicas == 1
    # The version changes with what takes a restart, not with the config (re-read live).
    same = system_app(files, NodeBrokerSettings(), engine="native")
    assert same.version == app.version
    moved = system_app(files, NodeBrokerSettings(port=50020), engine="native")
    assert moved.version != app.version


def test_kube_system_app_is_a_deployment_with_a_host_port_and_the_broker_dir(
    tmp_path: Path,
) -> None:
    settings = NodeBrokerSettings(port=50010, image="registry.example/pybaetyl:1.2")
    app = system_app(NodeBrokerFiles(tmp_path), settings, engine="kube")
    objects = render(app, namespace="baetyl-edge")
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 1
    pod = deployments[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/pybaetyl:1.2"
    assert container["command"] == ["python", "-m", "broker.node"]
    assert container["args"] == ["--config", f"{CONTAINER_DIR}/config.json"]
    assert {"containerPort": 50010, "hostPort": 50010, "protocol": "TCP"} in container["ports"]
    (volume,) = pod["volumes"]
    assert volume["hostPath"]["path"] == str((tmp_path / "nodebroker").absolute())
    assert container["volumeMounts"][0]["mountPath"] == CONTAINER_DIR
    for obj in objects:
        _validated(obj)


def test_kube_system_app_needs_the_agents_image(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="--node-broker-image"):
        system_app(NodeBrokerFiles(tmp_path), NodeBrokerSettings(), engine="kube")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": 0}, "from 1 to 65535"),
        ({"local_port": 50010}, "local port and TLS port"),
        ({"spool_max_bytes": 0}, "must be positive"),
    ],
)
def test_settings_refuse_what_cannot_run(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(EdgeError, match=message):
        NodeBrokerSettings(**settings)

"""The chart speaks the project's language: real config keys, real CLI flags.

Every ``BAETYL_<SECTION>__<KEY>`` the cloud container gets, and the ConfigMap's baetyl.toml, go
through `management.config.load_settings`, which refuses unknown keys by name; every command line
the charts run goes through the real argument parser.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shlex
from pathlib import Path
from typing import Any

import pytest

from management.cli import build_parser
from management.config import load_settings
from tests.deploy.charts import (
    CLOUD,
    EDGE,
    EDGE_VALUES,
    REPLICATED,
    Manifest,
    Renderer,
    containers,
    env_of,
    one,
    pod_spec,
)

PLACEHOLDER_URL = "mysql://baetyl:secret@mysql.db.svc:3306/baetyl"


def _cloud_env(manifests: list[Manifest], tmp_path: Path) -> dict[str, str]:
    """The cloud container's environment as the pod sees it, with local paths and a fake secret."""
    deployment = one(manifests, "Deployment")
    cloud = next(c for c in pod_spec(deployment)["containers"] if c["name"] == "baetyl")
    env: dict[str, str] = {}
    for name, item in env_of(cloud).items():
        if "value" in item:
            env[name] = item["value"]
        else:
            assert item["valueFrom"]["secretKeyRef"], name
            env[name] = PLACEHOLDER_URL if name == "BAETYL_DATABASE__URL" else "from-a-secret"
    config = tmp_path / "baetyl.toml"
    config.write_text(one(manifests, "ConfigMap")["data"]["baetyl.toml"], encoding="utf-8")
    env["BAETYL_CONFIG"] = str(config)
    env["BAETYL_DATA_DIR"] = str(tmp_path / "data")
    return env


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse a `baetyl` command line with the real parser; a wrong flag fails the test."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"baetyl refuses {shlex.join(argv)}: {errors.getvalue()}")


def test_embedded_env_and_config_load(renderer: Renderer, tmp_path: Path) -> None:
    """load_settings accepts the embedded mode's environment and ConfigMap as the pod has them."""
    config = {"shadow": {"max_batch": 128}, "pki": {"node_cert_days": 90}}
    env = _cloud_env(renderer.manifests(CLOUD, {"config": config}), tmp_path)
    settings = load_settings(environ=env)
    everywhere = "0.0.0.0"  # noqa: S104 # what the chart must set, inside the pod
    assert settings.api.host == everywhere
    assert settings.api.activation_host == everywhere
    assert (settings.api.port, settings.api.activation_port, settings.broker.port) == (
        9004,
        9003,
        8883,
    )
    assert settings.api.public_host == "demo-pybaetyl.baetyl.svc"
    assert "demo-pybaetyl.baetyl.svc" in settings.pki.server_dns_names
    assert settings.pki.server_ips == ("127.0.0.1", "::1")
    assert settings.shadow.max_batch == 128
    assert settings.pki.node_cert_days == 90
    assert settings.data_dir == tmp_path / "data"
    assert settings.database.url == ""  # SQLite in the data directory


def test_replicated_env_loads(renderer: Renderer, tmp_path: Path) -> None:
    """The replicated mode's environment: the database URL and the [bus] section's keys."""
    env = _cloud_env(renderer.manifests(CLOUD, REPLICATED), tmp_path)
    settings = load_settings(environ=env)
    assert settings.database.url == PLACEHOLDER_URL
    assert settings.api.public_host == "baetyl.example.com"
    bus: dict[str, Any] = dataclasses.asdict(settings)["bus"]
    assert str(bus["mode"]) == "external"
    assert bus["url"] == "mqtts://emqx.mqtt.svc:8884"
    assert bus["public_address"] == "mqtt.example.com:8883"
    assert "share_group" not in bus
    assert "sharing" not in bus


def test_cloud_commands_are_real(renderer: Renderer) -> None:
    """The cloud container runs `baetyl up`; the CA hook runs `baetyl certs init` with its flags."""
    manifests = renderer.manifests(CLOUD)
    cloud = pod_spec(one(manifests, "Deployment"))["containers"][0]
    assert cloud["command"] == ["baetyl"]
    assert _parse(cloud["args"]).func.__name__ == _parse(["up"]).func.__name__
    job = pod_spec(one(manifests, "Job"))["containers"][0]
    assert job["command"][:2] == ["python3", "-c"]
    env = env_of(job)
    args = _parse(
        [
            "--data-dir",
            "/tmp/x",
            "certs",
            "init",
            "--common-name",
            env["CA_COMMON_NAME"]["value"],
            "--key-type",
            env["CA_KEY_TYPE"]["value"],
        ]
    )
    assert (args.common_name, args.key_type) == ("pybaetyl CA", "ec-p256")
    assert '"--common-name", os.environ["CA_COMMON_NAME"]' in job["command"][2]


def test_edge_agent_command_is_real(renderer: Renderer) -> None:
    """`baetyl edge run --engine kube` with the apps' namespace and the state directory's mount."""
    deployment = one(renderer.manifests(EDGE, EDGE_VALUES), "Deployment")
    agent = pod_spec(deployment)["containers"][0]
    args = _parse(agent["args"])
    assert args.engine == "kube"
    assert args.kube_namespace == "baetyl-edge"
    assert args.log_level == "info"
    assert args.report_interval == 20
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert str(args.state_dir) == mounts["state"]
    for container in containers(pod_spec(deployment)):
        assert not [e for e in container.get("env", []) if e["name"].startswith("BAETYL_")]


def test_edge_extra_args_reach_the_agent(renderer: Renderer) -> None:
    """agent.extraArgs are appended as strings and accepted by `baetyl edge run`."""
    values = {"agent": {"extraArgs": ["--renew-threshold", 0.5], "reportInterval": 5}}
    deployment = one(renderer.manifests(EDGE, EDGE_VALUES, values), "Deployment")
    args = _parse(pod_spec(deployment)["containers"][0]["args"])
    assert args.renew_threshold == 0.5
    assert args.report_interval == 5

"""``baetyl edge run``'s node broker flags, parsed into the agent's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import node_broker_settings
from edge.dataplane.nodebroker import NodeBrokerMode, NodeBrokerSettings
from management.cli import build_parser


def _settings(*flags: str) -> NodeBrokerSettings:
    args = build_parser().parse_args(["edge", "run", *flags])
    return node_broker_settings(args, Path("state"))


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAETYL_EDGE_IMAGE", raising=False)
    assert _settings() == NodeBrokerSettings(
        mode=NodeBrokerMode.AUTO,
        port=50010,
        bind="0.0.0.0",  # noqa: S104
        local_port=None,
        hosts=(),
        spool_max_bytes=256 * 1024 * 1024,
        spool_max_age=7 * 24 * 3600.0,
        image=None,
    )


def test_every_flag_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAETYL_EDGE_IMAGE", "from-the-chart:1")
    settings = _settings(
        "--node-broker", "on", "--node-broker-port", "50110", "--node-broker-bind", "10.0.0.2",
        "--node-broker-local-port", "50111", "--node-broker-host", "gw-1.local",
        "--node-broker-host", "10.0.0.2", "--spool-max-bytes", "64M", "--spool-max-age", "2h",
    )  # fmt: skip
    assert settings.mode is NodeBrokerMode.ON
    assert (settings.port, settings.bind, settings.local_port) == (50110, "10.0.0.2", 50111)
    assert settings.hosts == ("gw-1.local", "10.0.0.2")
    assert settings.spool_max_bytes == 64 * 1024 * 1024
    assert settings.spool_max_age == 7200.0
    assert settings.image == "from-the-chart:1"
    assert _settings("--node-broker-image", "mine:2").image == "mine:2"


@pytest.mark.parametrize(
    "flags",
    [
        ["--node-broker", "maybe"],
        ["--node-broker-port", "0"],
        ["--node-broker-port", "65536"],
        ["--node-broker-local-port", "x"],
        ["--spool-max-bytes", "0"],
        ["--spool-max-bytes", "12T"],
        ["--spool-max-age", "-1"],
        ["--spool-max-age", "soon"],
    ],
)
def test_bad_values_are_refused_with_usage(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["edge", "run", *flags])
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err

"""The simulated nodes reconnect as the edge agent does: checked against the agent and paho."""

from __future__ import annotations

import random
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import _ConnectionState

from certs import CertificateAuthority
from edge.agent import AgentConfig
from edge.link import CloudLink, NodeIdentity
from tests.broker.helpers import issue_node
from tests.faults.simnode import agent_first_delay, agent_reconnect_delay, full_jitter_delay


def paho_delays(client: mqtt.Client, count: int) -> list[float]:
    """The waits paho's own loop would take after a lost session and failed attempts."""
    # A disconnected client does not sleep in _reconnect_wait; it only updates its delay.
    client._state = _ConnectionState.MQTT_CS_DISCONNECTED
    out = []
    for _ in range(count):
        client._reconnect_wait()
        out.append(float(client._reconnect_delay or 0))
    return out


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.49, 0.51, 0.99])
def test_first_delay_and_backoff_are_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, draw: float
) -> None:
    """For the same random draw, the simulated node's delays are the agent's paho client's."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    creds = issue_node(ca, tmp_path / "node", "default", "policy")
    config = AgentConfig(tmp_path)
    identity = NodeIdentity("default.policy", "127.0.0.1", 1, creds.cert, creds.key, ca.ca_path)
    monkeypatch.setattr(random, "random", lambda: draw)
    link = CloudLink(identity, backoff=config.backoff, keepalive=lambda: config.keepalive,
                     on_online=lambda: None, on_offline=lambda: None)  # fmt: skip
    client = link._client  # only the MQTT client is built: no connection

    class Draw(random.Random):
        def random(self) -> float:
            return draw

    first = agent_first_delay(config.backoff[0], Draw())
    assert client._reconnect_min_delay == first
    ours: list[float] = []
    delay: float | None = None
    for _ in range(9):
        delay = agent_reconnect_delay(delay, first, config.backoff[1])
        ours.append(delay)
    assert ours == paho_delays(client, 9)
    assert ours[-1] == 60.0


def test_full_jitter_spreads_retries_within_its_window() -> None:
    """The comparison policy draws from [0, 2^(failures+1)) s, capped at 60 s."""
    rng = random.Random(1)  # noqa: S311 # retry timing, not secrets
    for failures, cap in [(0, 2.0), (1, 4.0), (3, 16.0), (9, 60.0)]:
        draws = [full_jitter_delay(failures, rng) for _ in range(200)]
        assert all(0.0 <= d < cap for d in draws)
        assert max(draws) > cap * 0.8  # spread over the window, not bunched at its start

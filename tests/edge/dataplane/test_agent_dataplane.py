"""The agent with its data plane, message by message (the harness of test_agent_protocol.py)."""

from __future__ import annotations

import json
import logging

import pytest

from edge.dataplane.nodebroker import BROKER_APP
from shadow import Channel
from tests.edge.dataplane.test_nodebroker import DEVICE
from tests.edge.test_agent_protocol import Harness, harness

__all__ = ["harness"]  # the fixture, imported for pytest


async def test_a_user_app_named_like_the_node_broker_is_ignored_and_devices_are_fetched(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    desired = {
        "apps": [{"name": BROKER_APP, "version": "9"}],
        "nodeprops": {},
        "devices": [{"name": "thermo-1", "version": "3"}],
    }
    with caplog.at_level(logging.WARNING, logger="edge.agent"):
        await harness.receive(Channel.DESIRE, {"version": 2, "desired": desired, "timestamp": 1})
    asked = [
        (body["kind"], body["name"], body["version"])
        for channel, body in harness.sent
        if channel is Channel.RESOURCE_GET
    ]
    assert asked == [("device", "thermo-1", "3")]  # never the user's baetyl-broker
    assert any("the name is the node broker's" in r.getMessage() for r in caplog.records)
    resource = {"kind": "device", "name": "thermo-1", "version": "3", "spec": DEVICE,
                "timestamp": 1}  # fmt: skip
    await harness.receive(Channel.RESOURCE, resource)
    config = harness.agent.dataplane.files.config
    assert json.loads(config.read_text())["devices"][0]["name"] == "thermo-1"
    # The spec is kept in agent.json: a restart offline still configures the broker.
    kept = json.loads(harness.agent.state.path.read_text())["specs"]
    assert "device/thermo-1/3" in kept

"""A route through a real function app: the node's runtime transforms a device's message, a
function returning None drops it (counted ``filtered``), one that raises fails it (counted
``failed``, its reason in ``lastError``) and the next messages still flow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    ARRIVE,
    START,
    StartAgent,
    cloud_client,
    password_device,
    publish,
    route_ready,
    route_stats,
    service_creds,
    start_node_broker,
    up,
)
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until

CODE = """\
def convert(event, context):
    if event.get("drop"):
        return None
    if event.get("boom"):
        raise ValueError("bad reading")
    return {"device": "thermo-1", "f": event["c"] * 9 / 5 + 32}
"""


async def test_a_function_route_transforms_drops_and_survives_a_raising_function(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    config = {"name": "scale-code", "data": {"scale.py": CODE}}
    assert (await api.call("POST", "/configs", config))[0] == 201
    app = {
        "name": "scale",
        "type": "function",
        "selector": "site=x",
        "services": [
            {
                "name": "python",
                "runtime": "python3",
                "handlers": [
                    {"name": "convert", "handler": "scale.convert", "codeConfig": "scale-code"}
                ],
            }
        ],
        "volumes": [{"name": "code", "config": {"name": "scale-code"}}],
    }
    assert (await api.call("POST", "/apps", app))[0] == 201
    route = {
        "name": "fahrenheit",
        "selector": "site=x",
        "source": {"local": "devices/+/celsius"},
        "function": {"app": "scale", "function": "convert"},
        "target": {"cloud": "fahrenheit/{device}"},
    }
    status, body = await api.call("POST", "/routes", route)
    assert status == 201, body
    password = await password_device(api, "thermo-1")
    broker = await start_node_broker(start_agent, agent_dir)
    await route_ready(api, "fahrenheit")

    async def function_running() -> bool:
        stats = (await api.call("GET", "/nodes/gw-1/stats"))[1]
        return any(s["name"] == "scale" and s["status"] == "Running" for s in stats["appstats"])

    await until(function_running, START, "the node to run the function app")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("fahrenheit/#"))
    device: MqttClient | None = None
    try:
        device = await broker.connect("thermo-1", password=password)

        async def send(event: dict[str, Any]) -> None:
            payload = json.dumps(event).encode()
            await publish(device, "devices/thermo-1/celsius", payload, 1)

        # The runtime may still be warming up after it reports Running: the first message is
        # sent until one comes through (the ones before count as failed).
        topic = up("fahrenheit/thermo-1")

        async def first() -> bytes | None:
            await send({"c": 100})
            try:
                return (await asyncio.to_thread(service.receive_on, topic, 3)).payload
            except AssertionError:
                return None

        assert json.loads(await until(first, START, "the function route to carry one")) == {
            "device": "thermo-1", "f": 212.0
        }  # fmt: skip
        before = await route_stats(api, "fahrenheit", lambda s: s["forwarded"] >= 1)

        for event in ({"c": 0, "drop": True}, {"c": 1, "boom": True}, {"c": 20}, {"c": -40}):
            await send(event)
        got: list[Any] = []
        while len(got) < 2:  # a repeat of the first message that was still on its way: skipped
            event = json.loads((await asyncio.to_thread(service.receive_on, topic, ARRIVE)).payload)
            if event["f"] != 212.0:
                got.append(event)
        assert got == [{"device": "thermo-1", "f": 68.0}, {"device": "thermo-1", "f": -40.0}]
        assert await asyncio.to_thread(service.drain, 1.0) == []

        stats = await route_stats(
            api, "fahrenheit",
            lambda s: s["forwarded"] >= before["forwarded"] + 2
            and s["filtered"] == before["filtered"] + 1 and s["failed"] == before["failed"] + 1
            and s["queued"] == 0,  # a count refreshed every 2 s: it comes to 0 after the others
        )  # fmt: skip
        assert "ValueError: bad reading" in stats["lastError"], stats
        assert stats["dropped"] == 0
    finally:
        if device is not None:
            await asyncio.to_thread(device.close)
        await asyncio.to_thread(service.close)

"""Downlink end to end: a cloud service publishes on the node's ``down/cmd/<device>``; the route
``{cloud: "cmd/+"} → {local: "devices/{2}/commands"}`` (``{2}``: the second level of the part
after ``down/``) delivers it to the device's subscription on the node broker — at once while it
is connected, and, on its persistent session, when it comes back."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.broker.clients import MqttClient, mosquitto_pub
from tests.dataplane.harness import (
    ARRIVE,
    StartAgent,
    down,
    password_device,
    route_ready,
    route_stats,
    service_creds,
    start_node_broker,
)
from tests.support.cloud import Api, RunningCloud

COMMANDS_DOWN = {
    "name": "commands-down",
    "selector": "site=x",
    "source": {"cloud": "cmd/+"},
    "target": {"local": "devices/{2}/commands"},
    "qos": 1,
}


async def test_a_cloud_command_reaches_the_device_online_and_after_it_reconnects(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    password = await password_device(api, "thermo-1")
    other = await password_device(api, "thermo-2")
    assert (await api.call("POST", "/routes", COMMANDS_DOWN))[0] == 201
    broker = await start_node_broker(start_agent, agent_dir)
    await route_ready(api, "commands-down")
    service = service_creds(cloud, tmp_path)

    def send(device: str, *commands: str) -> None:
        done = mosquitto_pub(cloud.mqtt_port, cloud.ca.ca_path, service,
                             down(f"cmd/{device}"), "\n".join(commands))  # fmt: skip
        assert done.returncode == 0, done.stderr

    device: MqttClient | None = None
    bystander: MqttClient | None = None
    try:
        device = await broker.connect("thermo-1", password=password, clean_session=False)
        assert await asyncio.to_thread(device.subscribe, "devices/thermo-1/commands", 1) == [1]
        bystander = await broker.connect("thermo-2", password=other)
        assert await asyncio.to_thread(bystander.subscribe, "devices/thermo-2/commands", 1) == [1]

        await asyncio.to_thread(send, "thermo-1", "reboot")
        message = await asyncio.to_thread(device.receive_on, "devices/thermo-1/commands", ARRIVE)
        assert (message.payload, message.qos) == (b"reboot", 1)

        # Offline on its persistent session: the node broker keeps what the route delivers.
        await asyncio.to_thread(device.close)
        device = None
        await asyncio.to_thread(send, "thermo-1", "update-1", "update-2")
        # The template picks the device from the topic: thermo-2 gets its own, and only that.
        await asyncio.to_thread(send, "thermo-2", "ping")
        message = await asyncio.to_thread(bystander.receive, ARRIVE)
        assert (message.topic, message.payload) == ("devices/thermo-2/commands", b"ping")
        await route_stats(api, "commands-down", lambda s: s["forwarded"] == 4)
        assert await asyncio.to_thread(bystander.drain, 1.0) == []

        # It comes back with mosquitto_sub on the same session: both, in order.
        options = ("-c", "-q", "1", "-t", "devices/thermo-1/commands", "-C", "2", "-W", "60")
        argv = broker.mosquitto("mosquitto_sub", "thermo-1", password, *options)
        got = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=90, check=False
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.splitlines() == ["update-1", "update-2"]
    finally:
        for client in (device, bystander):
            if client is not None:
                await asyncio.to_thread(client.close)

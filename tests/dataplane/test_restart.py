"""The agent restarts while a device stays connected: the node broker outlives the agent (a
native app), spools what the device publishes meanwhile, and the next agent adopts it (the
device is not disconnected) and sends the spooled message up; commands keep flowing down."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    ARRIVE,
    TELEMETRY_UP,
    StartAgent,
    cloud_client,
    down,
    password_device,
    publish,
    route_ready,
    service_creds,
    start_node_broker,
    up,
)
from tests.support.cloud import Api, RunningCloud

DOWN = {
    "name": "commands-down",
    "selector": "site=x",
    "source": {"cloud": "cmd/+"},
    "target": {"local": "devices/{2}/commands"},
    "qos": 1,
}


async def test_the_broker_outlives_an_agent_restart_and_what_it_spooled_goes_up(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    password = await password_device(api, "thermo-1")
    for route in (TELEMETRY_UP, DOWN):
        status, body = await api.call("POST", "/routes", route)
        assert status == 201, body
    broker = await start_node_broker(start_agent, agent_dir)
    await route_ready(api, "telemetry-up")
    await route_ready(api, "commands-down")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("#"))
    device: MqttClient | None = None
    try:
        device = await broker.connect("thermo-1", password=password)
        await publish(device, "devices/thermo-1/telemetry", b'{"t": 21.5}', 1)
        topic = up("telemetry/thermo-1")
        message = await asyncio.to_thread(service.receive_on, topic, ARRIVE)
        assert message.payload == b'{"t": 21.5}'

        # Downlink: the service's command reaches the device through the cloud-sourced route.
        await asyncio.to_thread(device.subscribe, "devices/thermo-1/commands", 1)
        await publish(service, down("cmd/thermo-1"), b"reboot", 1)
        command = await asyncio.to_thread(device.receive_on, "devices/thermo-1/commands", ARRIVE)
        assert command.payload == b"reboot"

        # The agent stops: the broker keeps running (the device stays connected) and spools
        # what the device publishes; the next agent adopts the broker and sends it up.
        broker.agent.send_signal(signal.SIGTERM)
        await asyncio.to_thread(broker.agent.communicate, timeout=30)  # reads its log
        await publish(device, "devices/thermo-1/telemetry", b"while away", 1)
        assert not device.disconnected.is_set()
        start_agent(*broker.options)
        while True:  # at least once: a message sent before may come again, nothing else
            message = await asyncio.to_thread(service.receive_on, topic, ARRIVE * 2)
            if message.payload != b'{"t": 21.5}':
                break
        assert message.payload == b"while away"
        assert not device.disconnected.is_set()  # adopted, not started again

        # And the new agent carries commands down again.
        await publish(service, down("cmd/thermo-1"), b"again", 1)
        command = await asyncio.to_thread(device.receive_on, "devices/thermo-1/commands", ARRIVE)
        assert command.payload == b"again"
    finally:
        if device is not None:
            await asyncio.to_thread(device.close)
        await asyncio.to_thread(service.close)

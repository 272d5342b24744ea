"""Uplink end to end: a device's message goes through the node broker a real agent runs, a
route, and the cloud broker to a cloud subscriber — a password device with ``mosquitto_pub`` to
an operator's ``mosquitto_sub``, a certificate device with paho to a service's paho client."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    ARRIVE,
    START,
    TELEMETRY_UP,
    StartAgent,
    certificate_device,
    cloud_client,
    cloud_sub,
    next_line,
    operator_creds,
    password_device,
    publish,
    route_ready,
    service_creds,
    start_node_broker,
    up,
)
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until


async def test_a_password_device_with_mosquitto_pub_reaches_an_operators_mosquitto_sub(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    """mosquitto_pub over TLS (the device CA the agent got), username and password → the node
    broker → route telemetry-up → `$baetyl/node/<id>/up/telemetry/<device>` → mosquitto_sub
    with an operator certificate: every line, in order, and nothing else."""
    password = await password_device(api, "thermo-1")
    assert (await api.call("POST", "/routes", TELEMETRY_UP))[0] == 201
    broker = await start_node_broker(start_agent, agent_dir)
    await route_ready(api, "telemetry-up")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path))
    try:
        sub = await cloud_sub(cloud, operator_creds(cloud, tmp_path), service, up("#"))
        with sub:
            lines = [f'{{"t": {n}}}' for n in range(20)]
            options = ("-t", "devices/thermo-1/telemetry", "-q", "1", "-l")
            argv = broker.mosquitto("mosquitto_pub", "thermo-1", password, *options)

            def publish() -> subprocess.CompletedProcess[str] | None:
                done = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True,
                                      text=True, timeout=30, check=False)  # fmt: skip
                return done if done.returncode == 0 else None

            # Until the broker has the device's config, mosquitto_pub is refused (and publishes
            # nothing); once it is accepted, each line is one QoS 1 message.
            done = await until(
                lambda: asyncio.to_thread(publish), START, "mosquitto_pub to be accepted"
            )
            assert done.stderr == ""
            topic = up("telemetry/thermo-1")
            got = [await next_line(sub) for _ in lines]
            assert got == [f"{topic} {line}" for line in lines]
            assert await asyncio.to_thread(sub.drain, 1.0) == []
    finally:
        await asyncio.to_thread(service.close)


async def test_a_certificate_device_with_paho_reaches_a_service(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A device with a key and CSR made here, its certificate from `POST
    /v1/devices/{name}/certificates`: its QoS 1 messages reach a service in order. The CA the
    API answers is the one the agent put beside its broker; the device certificate does not
    get into the cloud broker."""
    assert (await api.call("POST", "/routes", TELEMETRY_UP))[0] == 201
    device = await certificate_device(api, "sensor-2", tmp_path)
    broker = await start_node_broker(start_agent, agent_dir)
    assert device.ca == broker.device_ca.read_bytes()
    await route_ready(api, "telemetry-up")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("telemetry/#"))
    client: MqttClient | None = None
    try:
        client = await broker.connect("sensor-2", creds=device.creds)
        for n in range(10):
            await publish(client, "devices/sensor-2/telemetry", b"%d" % n, 1)
        topic = up("telemetry/sensor-2")
        got = [(await asyncio.to_thread(service.receive_on, topic, ARRIVE)).payload
               for _ in range(10)]  # fmt: skip
        assert got == [b"%d" % n for n in range(10)]

        # The cloud broker trusts the cloud CA only: the device's certificate fails there.
        stray = MqttClient(cloud.mqtt_port, "sensor-2", ca=cloud.ca.ca_path, creds=device.creds)
        try:
            assert await asyncio.to_thread(stray.try_connect, 10) is None
        finally:
            await asyncio.to_thread(stray.close)
    finally:
        if client is not None:
            await asyncio.to_thread(client.close)
        await asyncio.to_thread(service.close)

"""What the node broker refuses, end to end: a device publishing or subscribing outside its
topics, using another device's client id, a wrong password, connecting to another node's broker
(two nodes, two agents, two node brokers), and a payload over the broker's packet limit."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    ARRIVE,
    BAD_PASSWORD,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    StartAgent,
    certificate_device,
    cloud_client,
    password_device,
    publish,
    route_ready,
    service_creds,
    start_node_broker,
    up,
)
from tests.support.agent import activate_node
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until

# Every device topic goes up, so a message the node broker let through would show.
EVERYTHING_UP = {
    "name": "everything-up",
    "selector": "site=x",
    "source": {"local": "devices/#"},
    "target": {"cloud": "all/{topic}"},
}
TOPICS = {"publish": ["devices/{device}/telemetry"], "subscribe": ["devices/{device}/commands/#"]}


async def test_a_device_stays_inside_its_topics_identity_and_node(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    assert (await api.call("POST", "/routes", EVERYTHING_UP))[0] == 201
    password = await password_device(api, "thermo-1", topics=TOPICS)
    await password_device(api, "thermo-2", topics=TOPICS)
    certified = await certificate_device(api, "sensor-3", tmp_path)
    other_state = tmp_path / "edge-2"
    await activate_node(api, "gw-2", {"site": "y"}, other_state)
    other_password = await password_device(api, "meter-9", node="gw-2")
    broker = await start_node_broker(start_agent, agent_dir)
    other = await start_node_broker(start_agent, other_state)
    await route_ready(api, "everything-up")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("all/#"))
    device: MqttClient | None = None
    try:
        # Its topics only: the publishes outside them are acknowledged and dropped, the
        # subscription outside them refused; its own message is the first to reach the cloud.
        device = await broker.connect("thermo-1", password=password)
        for topic in ("devices/thermo-2/telemetry", "devices/thermo-1/other", "elsewhere"):
            await publish(device, topic, b"smuggled", 1)
        await publish(device, "devices/thermo-1/telemetry", b"mine", 1)
        message = await asyncio.to_thread(service.receive, ARRIVE)
        assert (message.topic, message.payload) == (up("all/devices/thermo-1/telemetry"), b"mine")
        assert await asyncio.to_thread(service.drain, 1.0) == []
        assert await asyncio.to_thread(device.subscribe, "devices/#", 1) == [0x80]
        assert await asyncio.to_thread(device.subscribe, "devices/thermo-2/commands/#", 1) == [0x80]
        assert await asyncio.to_thread(device.subscribe, "devices/thermo-1/commands/x", 1) == [1]
        assert not device.disconnected.is_set()  # refusals do not cost the connection

        # Another device's client id, a wrong password, no credential at all.
        as_other = await broker.try_connect("thermo-2", username="thermo-1", password=password)
        assert as_other == (IDENTIFIER_REJECTED, False)
        assert await broker.try_connect("thermo-1", password="not-it") == (BAD_PASSWORD, False)
        assert await broker.try_connect("thermo-1", password=password + "x") == (
            BAD_PASSWORD, False
        )  # fmt: skip
        assert await broker.try_connect("thermo-1") == (NOT_AUTHORIZED, False)
        assert await broker.try_connect("sensor-2", creds=certified.creds) == (
            IDENTIFIER_REJECTED, False
        )  # fmt: skip

        # Another node's broker (same device CA, so TLS passes): gw-1's devices are strangers
        # there, and gw-2's device works there only.
        await other.connect("meter-9", password=other_password)  # gw-2's config is in force
        meter = await broker.try_connect("meter-9", password=other_password)
        assert meter == (BAD_PASSWORD, False)
        assert await other.try_connect("thermo-1", password=password) == (BAD_PASSWORD, False)
        assert await other.try_connect("sensor-3", creds=certified.creds) == (
            NOT_AUTHORIZED, False
        )  # fmt: skip

        # Counted (status.json is rewritten at most every 0.5 s: wait for the last refusal's
        # reason, the earlier ones are in the same file).
        refused = await other.refused("other-node")
        assert refused.get("bad-password", 0) >= 1
        counts = await broker.refused("bad-password", 3)
        assert counts.get("client-id", 0) >= 2
        assert counts.get("not-authorized", 0) >= 1
        assert not device.disconnected.is_set()
    finally:
        if device is not None:
            await asyncio.to_thread(device.close)
        await asyncio.to_thread(service.close)


async def test_an_oversized_payload_cuts_its_device_only(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    """A PUBLISH over the node broker's packet limit (256 KiB, as the cloud's) closes that
    device's connection; nothing of it is stored or sent on; another device keeps going."""
    assert (await api.call("POST", "/routes", EVERYTHING_UP))[0] == 201
    big_password = await password_device(api, "big-1")
    password = await password_device(api, "thermo-1")
    broker = await start_node_broker(start_agent, agent_dir)
    await route_ready(api, "everything-up")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("all/#"))
    device: MqttClient | None = None
    try:
        device = await broker.connect("thermo-1", password=password)
        payload = tmp_path / "big.bin"
        payload.write_bytes(b"x" * (300 * 1024))
        options = ("-t", "devices/big-1/telemetry", "-q", "1", "-f", str(payload))
        argv = broker.mosquitto("mosquitto_pub", "big-1", big_password, *options)

        def big() -> subprocess.CompletedProcess[str]:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

        # Until the broker knows big-1 it is refused at CONNECT; then its PUBLISH cuts it.
        async def cut() -> subprocess.CompletedProcess[str] | None:
            done = await asyncio.to_thread(big)
            return None if "Connection Refused" in done.stderr else done

        done = await until(cut, 90, "big-1 to be connected and cut")
        assert "The connection was lost" in done.stderr, (done.returncode, done.stderr)

        await publish(device, "devices/thermo-1/telemetry", b"still here", 1)
        message = await asyncio.to_thread(service.receive, ARRIVE)
        assert (message.topic, message.payload) == (
            up("all/devices/thermo-1/telemetry"), b"still here"
        )  # fmt: skip
        assert await asyncio.to_thread(service.drain, 1.0) == []
        assert not device.disconnected.is_set()
    finally:
        if device is not None:
            await asyncio.to_thread(device.close)
        await asyncio.to_thread(service.close)

"""What the cloud shows of a node's data plane: per route ``forwarded``/``queued``/``dropped``/
``failed``/``lastError`` (``GET /v1/nodes/{name}/stats``), its devices' presence (the stats,
``GET /v1/devices/{name}`` ``online``, ``baetyl node get``, ``baetyl device list``) — each
made to change by real traffic, a real outage of the node's uplink and the spool's bound."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    ARRIVE,
    START,
    TELEMETRY_UP,
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
from tests.support.agent import Partition, point_agent_at
from tests.support.cli import Cli
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until

# Renders the fifth level of a three-level topic: every message fails, with its reason.
BROKEN = {
    "name": "broken",
    "selector": "site=x",
    "source": {"local": "devices/#"},
    "target": {"cloud": "t/{5}"},
}
PAYLOAD = 100  # bytes per message
BOUND = 2000  # the spool's bound in bytes: 20 messages


async def test_route_stats_and_device_presence_show_in_the_api_and_the_cli(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: StartAgent,
    tmp_path: Path,
    baetyl: Cli,
) -> None:
    for route in (TELEMETRY_UP, BROKEN):
        status, body = await api.call("POST", "/routes", route)
        assert status == 201, body
    password = await password_device(api, "thermo-1")
    await password_device(api, "thermo-2")
    partition = Partition(cloud.mqtt_port)  # the node's uplink, to cut
    await partition.start()
    point_agent_at(agent_dir, partition.port)
    broker = await start_node_broker(start_agent, agent_dir, "--spool-max-bytes", str(BOUND))
    await route_ready(api, "telemetry-up")
    await route_ready(api, "broken")
    service = await cloud_client(cloud, service_creds(cloud, tmp_path), up("telemetry/#"))
    device: MqttClient | None = None
    try:
        device = await broker.connect("thermo-1", password=password)

        # Presence: thermo-1 online, thermo-2 never seen, everywhere the cloud shows it.
        async def presence() -> dict[str, Any] | None:
            devices = (await api.call("GET", "/nodes/gw-1/stats"))[1].get("devices") or {}
            return devices if devices.get("thermo-1", {}).get("online") else None

        devices = await until(presence, START, "the node to report thermo-1 online")
        assert devices["thermo-2"] == {"online": False, "since": None}
        assert isinstance(devices["thermo-1"]["since"], float | int)
        status, shown = await api.call("GET", "/devices/thermo-1")
        since = devices["thermo-1"]["since"]
        assert (status, shown["online"], shown["since"]) == (200, True, since)
        assert (await api.call("GET", "/devices/thermo-2"))[1]["online"] is False
        listed = await baetyl("device", "list")
        assert listed.code == 0, listed.err
        rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
        assert rows["thermo-1"][1:3] == ["gw-1", "yes"], listed.out
        assert rows["thermo-2"][1:3] == ["gw-1", "no"], listed.out
        node = await baetyl("node", "get", "gw-1")
        assert node.code == 0, node.err
        table = node.out[node.out.index("DEVICE") :].splitlines()
        assert table[1].split()[:2] == ["thermo-1", "yes"], node.out
        assert table[2].split()[:2] == ["thermo-2", "no"], node.out

        # Traffic: forwarded by one route, failed by the other, with its reason.
        for n in range(5):
            await publish(device, "devices/thermo-1/telemetry", b"%d" % n, 1)
        for n in range(5):
            message = await asyncio.to_thread(service.receive_on, up("telemetry/thermo-1"), ARRIVE)
            assert message.payload == b"%d" % n
        # (queued is a count the router refreshes every 2 s: it comes to 0 after forwarded)
        stats = await route_stats(
            api, "telemetry-up", lambda s: s["forwarded"] == 5 and s["queued"] == 0
        )
        assert (stats["dropped"], stats["failed"], stats["lastError"]) == (0, 0, None)
        broken = await route_stats(api, "broken", lambda s: s["failed"] == 5 and s["queued"] == 0)
        assert broken["forwarded"] == 0
        assert "{5}" in broken["lastError"], broken
        node = await baetyl("node", "get", "gw-1")
        table = node.out[node.out.index("ROUTE") :].splitlines()
        assert table[1].split()[:6] == ["broken", "0", "0", "0", "0", "5"], node.out
        assert "{5}" in table[1], node.out
        assert table[2].split() == ["telemetry-up", "5", "0", "0", "0", "0", "<none>"], node.out
        shown = await baetyl("node", "get", "gw-1", "-o", "json")
        assert shown.code == 0, shown.err
        report = shown.json()["report"]
        assert report["routes"]["telemetry-up"]["forwarded"] == 5
        assert report["routes"]["broken"]["failed"] == 5
        assert report["devices"]["thermo-1"]["online"] is True

        # The uplink is cut: the node spools; past the spool's bound the oldest go, and the
        # route reports them dropped once the uplink is back; the newest come up in order.
        await partition.cut()
        spool = agent_dir / "nodebroker" / "spool.db"
        for n in range(40):
            body = b"%03d" % n + b"." * (PAYLOAD - 3)
            await publish(device, "devices/thermo-1/telemetry", body, 1)

        def kept_within_bound() -> int | None:
            """How many of this burst's messages the spool keeps, once within its bound (it is
            applied right after the commit that crossed it, the PUBACK before)."""
            with contextlib.closing(sqlite3.connect(spool)) as db:
                size, burst = db.execute(
                    "SELECT coalesce(sum(length(payload)), 0), "
                    "count(CASE WHEN length(payload) = ? THEN 1 END) FROM messages",
                    (PAYLOAD,),
                ).fetchone()
            return int(burst) if int(size) <= BOUND else None

        burst = await until(
            lambda: asyncio.to_thread(kept_within_bound), what="the spool to keep its bound"
        )
        assert 0 < burst < 40
        await partition.start()
        stats = await route_stats(
            api, "telemetry-up", lambda s: s["dropped"] > 0 and s["queued"] == 0
            and s["forwarded"] + s["dropped"] == 45,
        )  # fmt: skip
        kept = stats["forwarded"] - 5
        assert 0 < kept <= BOUND // PAYLOAD
        got = [
            (await asyncio.to_thread(service.receive_on, up("telemetry/thermo-1"), ARRIVE)).payload
            for _ in range(kept)
        ]
        assert [int(p[:3]) for p in got] == list(range(40 - kept, 40))

        # Offline: the device disconnects, and the cloud shows it.
        await asyncio.to_thread(device.close)
        device = None

        async def offline() -> bool:
            return (await api.call("GET", "/devices/thermo-1"))[1]["online"] is False

        await until(offline, START, "the API to show thermo-1 offline")
        listed = await baetyl("device", "list")
        rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
        assert rows["thermo-1"][1:3] == ["gw-1", "no"], listed.out
    finally:
        if device is not None:
            await asyncio.to_thread(device.close)
        await asyncio.to_thread(service.close)
        await partition.cut()

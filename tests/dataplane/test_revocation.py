"""Revocation end to end: a device deleted through the API, and a device certificate revoked
(``DELETE /v1/devices/{name}/certificates/{serial}``), are cut while connected as soon as their
node has the change, and refused when they connect again; the other devices stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.broker.clients import MqttClient
from tests.dataplane.harness import (
    BAD_PASSWORD,
    NOT_AUTHORIZED,
    START,
    StartAgent,
    certificate_device,
    password_device,
    start_node_broker,
)
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until


async def test_a_deleted_device_and_a_revoked_certificate_are_cut_and_refused(
    cloud: RunningCloud, api: Api, agent_dir: Path, start_agent: StartAgent, tmp_path: Path
) -> None:
    password = await password_device(api, "thermo-1")
    stays = await password_device(api, "thermo-2")
    certified = await certificate_device(api, "sensor-3", tmp_path)
    (tmp_path / "spare").mkdir()
    spare = await certificate_device(api, "sensor-3", tmp_path / "spare", create=False)
    broker = await start_node_broker(start_agent, agent_dir)
    clients: list[MqttClient] = []
    try:
        deleted = await broker.connect("thermo-1", password=password)
        clients.append(deleted)
        bystander = await broker.connect("thermo-2", password=stays)
        clients.append(bystander)
        revoked = await broker.connect("sensor-3", creds=certified.creds)
        clients.append(revoked)

        # The device is deleted: cut while connected, refused after (an unknown username).
        assert (await api.call("DELETE", "/devices/thermo-1"))[0] == 204
        await until(deleted.disconnected.is_set, START, "the deleted device to be cut")
        assert await broker.try_connect("thermo-1", password=password) == (BAD_PASSWORD, False)

        # One of sensor-3's two certificates is revoked: that connection is cut and refused
        # again; the other certificate still connects.
        status, _ = await api.call("DELETE", f"/devices/sensor-3/certificates/{certified.serial}")
        assert status == 204
        await until(revoked.disconnected.is_set, START, "the revoked certificate to be cut")
        assert await broker.try_connect("sensor-3", creds=certified.creds) == (
            NOT_AUTHORIZED, False
        )  # fmt: skip
        assert await broker.try_connect("sensor-3", creds=spare.creds) == (0, False)

        assert not bystander.disconnected.is_set()
        counts = await broker.refused("unlisted-certificate")
        assert counts.get("bad-password", 0) >= 1
    finally:
        for client in clients:
            await asyncio.to_thread(client.close)

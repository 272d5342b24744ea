"""Revocation end to end: a device deleted through the API, a device certificate revoked
(``DELETE /v1/devices/{name}/certificates/{serial}``) and a password replaced are cut while
connected as soon as their node has the change, and refused when they connect again; the other
devices, and the device's other certificate, stay."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography import x509

from certs import build_csr, generate_private_key, write_private_file
from certs.keys import private_key_pem
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds
from tests.dataplane.harness import (
    BAD_PASSWORD,
    NOT_AUTHORIZED,
    START,
    StartAgent,
    certificate_device,
    password_device,
    start_node_broker,
)
from tests.support.cli import Cli
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until


async def test_a_deleted_device_and_a_revoked_certificate_are_cut_and_refused(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: StartAgent,
    tmp_path: Path,
    baetyl: Cli,
) -> None:
    password = await password_device(api, "thermo-1")
    stays = await password_device(api, "thermo-2")
    rotated = await password_device(api, "thermo-3")
    certified = await certificate_device(api, "sensor-3", tmp_path)
    # sensor-3's second certificate, from the CLI: `baetyl certs issue device`.
    key = generate_private_key()
    write_private_file(tmp_path / "spare.key", private_key_pem(key))
    (tmp_path / "spare.csr").write_bytes(build_csr(key))
    files = {name: str(tmp_path / name) for name in ("spare.csr", "spare.crt", "ca.crt")}
    issued = await baetyl("certs", "issue", "device", "sensor-3", "--csr", files["spare.csr"],
                          "--out", files["spare.crt"], "--ca-out", files["ca.crt"])  # fmt: skip
    assert issued.code == 0, issued.err
    spare = x509.load_pem_x509_certificate((tmp_path / "spare.crt").read_bytes())
    spare_creds = Creds("sensor-3", tmp_path / "spare.crt", tmp_path / "spare.key",
                        spare.serial_number)  # fmt: skip
    broker = await start_node_broker(start_agent, agent_dir)
    clients: list[MqttClient] = []
    try:
        deleted = await broker.connect("thermo-1", password=password)
        clients.append(deleted)
        bystander = await broker.connect("thermo-2", password=stays)
        clients.append(bystander)
        revoked = await broker.connect("sensor-3", creds=certified.creds)
        clients.append(revoked)
        changed = await broker.connect("thermo-3", password=rotated)
        clients.append(changed)
        assert (tmp_path / "ca.crt").read_bytes() == broker.device_ca.read_bytes()

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
        assert await broker.try_connect("sensor-3", creds=spare_creds) == (0, False)

        # A new password: the session on the old one is cut; only the new one connects.
        status, answer = await api.call("POST", "/devices/thermo-3/password")
        assert status == 201, answer
        await until(changed.disconnected.is_set, START, "the old password's session to be cut")
        assert await broker.try_connect("thermo-3", password=rotated) == (BAD_PASSWORD, False)
        assert await broker.try_connect("thermo-3", password=answer["password"]) == (0, False)

        assert not bystander.disconnected.is_set()
        counts = await broker.refused("unlisted-certificate")
        assert counts.get("bad-password", 0) >= 1
    finally:
        for client in clients:
            await asyncio.to_thread(client.close)

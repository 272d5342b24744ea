"""The agent renews its certificate end to end: the real cloud in the test's loop, a real agent.

An agent runs the node's native app; a second agent, started with a renewal due at once, renews
the certificate (new key), reconnects with it and has the cloud retire the old one, while the app
keeps running; desired changes still reach the node afterwards.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs import CertificateRecord, Identity, Status
from tests.support.agent import app_wrote, node_online, post_site_app
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until
from tests.support.processes import alive, marked_processes

NODE_ID = "default.gw-1"

StartAgent = Callable[..., subprocess.Popen[str]]


def certificate_in(path: Path) -> x509.Certificate:
    """The certificate in ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def node_records(cloud: RunningCloud) -> dict[int, CertificateRecord]:
    """Every certificate the CA issued to gw-1, by serial."""
    identity = Identity.node("default", "gw-1")
    return {r.serial: r for r in cloud.ca.records() if r.identity == identity}


async def test_the_agent_renews_its_certificate_while_the_app_keeps_running(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: StartAgent,
    tmp_path: Path,
) -> None:
    """Renewed once with a new key, old certificate retired, app untouched, changes still arrive."""
    out = tmp_path / "app-out.txt"
    first_agent = start_agent()

    online = functools.partial(node_online, api)

    wrote = functools.partial(app_wrote, out)

    await until(online, what="the node to be online")
    config = await post_site_app(api, out)
    pid = await until(lambda: wrote("one"), what="the app to start")

    old_cert = certificate_in(agent_dir / "node.crt")
    old_key = (agent_dir / "node.key").read_bytes()
    assert [r.status for r in node_records(cloud).values()] == [Status.VALID]

    # The same node's agent again, now with its certificate due at once (a threshold of 1: every
    # check renews) and the next check an hour away: it renews exactly once, at start.
    first_agent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first_agent.wait, 10) == 0
    assert alive(pid)
    agent = start_agent("--renew-threshold", "1", "--renew-interval", "3600")

    async def renewed() -> x509.Certificate | None:
        current = certificate_in(agent_dir / "node.crt")
        return current if current.serial_number != old_cert.serial_number else None

    new_cert = await until(renewed, what="the agent to renew the certificate")
    names = new_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [name.value for name in names] == [NODE_ID]
    new_key = (agent_dir / "node.key").read_bytes()
    assert new_key != old_key
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    loaded = serialization.load_pem_private_key(new_key, password=None)
    assert loaded.public_key().public_bytes(*spki) == new_cert.public_key().public_bytes(*spki)

    # Connected with the new certificate, the agent has the cloud retire the old one.
    async def retired() -> bool:
        record = node_records(cloud)[old_cert.serial_number]
        return record.status is Status.REVOKED and record.reason is x509.ReasonFlags.superseded

    await until(retired, what="the old certificate to be retired as superseded")
    await until(lambda: asyncio.sleep(0, not (agent_dir / "node.crt.previous").exists()),
                what="node.crt.previous to be deleted")  # fmt: skip

    # The broker has dropped whatever still used the old certificate by now (it polls the CRL
    # every 0.1 s): the node is online on the new one, and its app was never touched.
    await asyncio.sleep(1)
    await until(online, what="the node to be online with the new certificate")
    broker = cloud.cloud.broker
    assert broker is not None
    assert NODE_ID in broker.connected()
    assert marked_processes(str(out)) == [pid]
    assert await wrote("one") == pid

    # A desired change still reaches the node over the new session.
    config["data"] = {"msg.txt": "two"}
    assert (await api.call("PUT", "/configs/site", config))[0] == 200
    second = await until(lambda: wrote("two"), what="the app to restart with the new config")
    assert second != pid
    await until(lambda: asyncio.sleep(0, not alive(pid)), what="the old app process to stop")

    # Renewed exactly once: the activation's certificate (retired) and the renewal's (in use).
    records = node_records(cloud)
    assert set(records) == {old_cert.serial_number, new_cert.serial_number}
    assert records[new_cert.serial_number].status is Status.VALID
    assert certificate_in(agent_dir / "node.crt").serial_number == new_cert.serial_number
    assert agent.poll() is None

"""Certificate renewal (``baetyl edge renew``, ``POST /v1/renew``) against the whole cloud.

A node is activated from its install command; renewals run in a thread while the test's loop
serves the cloud; the certificates are then used by paho clients against the cloud's broker.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs import Identity, Status, build_csr, generate_private_key
from edge.renewal import RenewalRefused, renew_if_due, renewal_due, retire_previous
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds
from tests.support.agent import connects, install_command, snapshot
from tests.support.cli import Cli
from tests.support.cloud import Api, RunningCloud

NODE_ID = "default.gw-1"


@pytest.fixture
async def state(api: Api, run: Cli, tmp_path: Path) -> Path:
    """The state directory of node gw-1, activated from its install command."""
    argv = await install_command(api, "gw-1")
    path = tmp_path / "state"
    result = await run(*argv, "--state-dir", str(path))
    assert result.code == 0, result.err
    return path


def certificate_in(path: Path) -> x509.Certificate:
    """The certificate in ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def public_key_of(path: Path) -> bytes:
    """The public key (DER) of the private key in ``path``."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certified_key(certificate: x509.Certificate) -> bytes:
    """The public key (DER) ``certificate`` is for."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def client_of(cloud: RunningCloud, files: Path) -> MqttClient:
    """A paho client for NODE_ID with the certificate and key in ``files``."""
    serial = certificate_in(files / "node.crt").serial_number
    creds = Creds(NODE_ID, files / "node.crt", files / "node.key", serial)
    return MqttClient(cloud.mqtt_port, NODE_ID, ca=files / "ca.crt", creds=creds)


async def post(
    state: Path, path: str, body: dict[str, Any], *, cert: tuple[Path, Path] | None
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the node's activation endpoint, with ``cert`` as client certificate."""
    context = ssl.create_default_context(cafile=state / "ca.crt")
    if cert is not None:
        context.load_cert_chain(*cert)
    url = json.loads((state / "node.json").read_text())["url"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, ssl=context) as response,
    ):
        return response.status, await response.json()


def new_csr() -> str:
    """A CSR (PEM) of a fresh key."""
    return build_csr(generate_private_key()).decode()


async def test_forced_renewal_gives_a_new_key_for_the_same_node(
    cloud: RunningCloud, run: Cli, state: Path
) -> None:
    """``baetyl edge renew --force`` swaps in a new key and certificate of the same node."""
    old_cert = certificate_in(state / "node.crt")
    old_key = public_key_of(state / "node.key")

    result = await run("edge", "renew", "--force", "--state-dir", str(state))

    assert result.code == 0, result.err
    assert "renewed: certificate" in result.out
    new_cert = certificate_in(state / "node.crt")
    assert new_cert.serial_number != old_cert.serial_number
    assert public_key_of(state / "node.key") != old_key
    assert certified_key(new_cert) == public_key_of(state / "node.key")
    assert new_cert.subject == old_cert.subject
    assert Identity.from_certificate(new_cert) == Identity.node("default", "gw-1")
    assert stat.S_IMODE((state / "node.key").stat().st_mode) == 0o600
    assert sorted(snapshot(state)) == [
        "ca.crt", "node.crt", "node.crt.previous", "node.csr", "node.json", "node.key"
    ]  # fmt: skip
    assert certificate_in(state / "node.crt.previous") == old_cert
    assert cloud.ca.record(new_cert.serial_number).status is Status.VALID
    assert cloud.ca.record(old_cert.serial_number).status is Status.VALID  # until retired
    assert await connects(cloud, state, NODE_ID)


async def test_a_session_made_with_the_old_certificate_lasts_until_it_is_retired(
    cloud: RunningCloud, state: Path, tmp_path: Path
) -> None:
    """Renewing cuts nothing; retiring the old certificate cuts only the session made with it."""
    before = tmp_path / "before"
    shutil.copytree(state, before)
    old = client_of(cloud, before)
    try:
        assert await asyncio.to_thread(old.try_connect) == (0, False)
        assert await asyncio.to_thread(renew_if_due, state, now=datetime.now(UTC), force=True)
        await asyncio.sleep(1.0)  # ten times the broker's CRL poll interval
        assert not old.disconnected.is_set()
        old_serial = certificate_in(before / "node.crt").serial_number

        old.close()  # the node reconnects with its new certificate...
        new = client_of(cloud, state)
        try:
            assert await asyncio.to_thread(new.try_connect) == (0, False)
            # ...and only then has the cloud retire the old one.
            assert await asyncio.to_thread(retire_previous, state)
            assert not (state / "node.crt.previous").exists()
            record = cloud.ca.record(old_serial)
            assert record.status is Status.REVOKED
            assert record.reason is x509.ReasonFlags.superseded
            await asyncio.sleep(1.0)
            assert not new.disconnected.is_set()
        finally:
            await asyncio.to_thread(new.close)
        assert not await asyncio.to_thread(retire_previous, state)  # nothing left to retire
    finally:
        await asyncio.to_thread(old.close)
    again = client_of(cloud, before)
    try:
        assert await asyncio.to_thread(again.try_connect) is None  # the old one is refused now
    finally:
        await asyncio.to_thread(again.close)


async def test_renewal_that_is_not_due_changes_nothing(run: Cli, state: Path) -> None:
    """With most of its lifetime left the certificate is kept, and no request is made."""
    before = snapshot(state)
    result = await run("edge", "renew", "--state-dir", str(state))
    assert result.code == 0, result.err
    assert "not renewed" in result.out
    assert not await asyncio.to_thread(renew_if_due, state, now=datetime.now(UTC))
    assert snapshot(state) == before


def test_renewal_is_due_in_the_last_part_of_the_lifetime(tmp_path: Path) -> None:
    """Due once less than ``threshold`` of the lifetime is left, and after expiry."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=100))
        .sign(key, hashes.SHA256())
    )
    assert not renewal_due(certificate, now=start + timedelta(days=69), threshold=0.3)
    assert renewal_due(certificate, now=start + timedelta(days=71), threshold=0.3)
    assert renewal_due(certificate, now=start + timedelta(days=101), threshold=0.3)
    assert renewal_due(certificate, now=start + timedelta(seconds=1), threshold=1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        renewal_due(certificate, now=start, threshold=1.5)


async def test_renewal_with_a_revoked_certificate_is_refused(
    cloud: RunningCloud, state: Path
) -> None:
    """A node whose certificate was revoked cannot renew it; nothing in the state changes."""
    cloud.ca.revoke(certificate_in(state / "node.crt").serial_number)
    before = snapshot(state)
    with pytest.raises(RenewalRefused, match="is revoked") as refused:
        await asyncio.to_thread(renew_if_due, state, now=datetime.now(UTC), force=True)
    assert refused.value.status == 401
    assert snapshot(state) == before


async def test_renewal_without_a_client_certificate_is_unauthorized(state: Path) -> None:
    """``POST /v1/renew`` without a client certificate answers 401."""
    status, body = await post(state, "/v1/renew", {"csr": new_csr()}, cert=None)
    assert status == 401, body
    assert body["code"] == "Unauthorized"
    assert "mutual TLS" in body["message"]


async def test_renewal_with_a_bad_csr_is_a_bad_request(state: Path) -> None:
    """A CSR that is garbage, or that reuses the current key, answers 400 on field csr."""
    cert = (state / "node.crt", state / "node.key")
    status, body = await post(state, "/v1/renew", {"csr": "garbage"}, cert=cert)
    assert status == 400, body
    assert body["field"] == "csr"
    key = serialization.load_pem_private_key((state / "node.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    same_key = build_csr(key).decode()
    status, body = await post(state, "/v1/renew", {"csr": same_key}, cert=cert)
    assert status == 400, body
    assert body["field"] == "csr"
    assert "new key" in body["message"]


async def test_renewal_with_an_operator_certificate_is_forbidden(
    cloud: RunningCloud, state: Path, tmp_path: Path
) -> None:
    """Only a node renews here: an operator's certificate of the same CA answers 403."""
    issued = cloud.ca.issue_operator("alice")
    assert issued.private_key_pem is not None
    (tmp_path / "op.crt").write_bytes(issued.certificate_pem)
    (tmp_path / "op.key").write_bytes(issued.private_key_pem)
    cert = (tmp_path / "op.crt", tmp_path / "op.key")
    status, body = await post(state, "/v1/renew", {"csr": new_csr()}, cert=cert)
    assert status == 403, body
    assert body["code"] == "Forbidden"


async def test_retiring_refuses_what_is_not_an_older_certificate_of_the_node(
    cloud: RunningCloud, state: Path
) -> None:
    """``/v1/renew/confirm`` retires only another certificate of the caller's own node."""
    cert = (state / "node.crt", state / "node.key")
    own = format(certificate_in(state / "node.crt").serial_number, "X")
    other = cloud.ca.issue_operator("bob").record.serial_hex
    for previous in (own, other, "zz"):
        status, body = await post(state, "/v1/renew/confirm", {"previous": previous}, cert=cert)
        assert status == 400, (previous, body)
        assert body["field"] == "previous"
    assert cloud.ca.record(int(own, 16)).status is Status.VALID


async def test_renewing_twice_unconfirmed_keeps_two_valid_certificates_at_most(
    cloud: RunningCloud, run: Cli, state: Path
) -> None:
    """A node (or a thief of its certificate) cannot pile up valid certificates by renewing."""
    first = certificate_in(state / "node.crt")
    for _ in range(3):
        result = await run("edge", "renew", "--force", "--state-dir", str(state))
        assert result.code == 0, result.err
    identity = Identity.node("default", "gw-1")
    valid = [
        r.serial for r in cloud.ca.records() if r.identity == identity and r.status is Status.VALID
    ]
    assert len(valid) == 2
    assert certificate_in(state / "node.crt").serial_number in valid
    assert first.serial_number not in valid

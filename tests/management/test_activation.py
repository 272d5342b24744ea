"""Activation over HTTPS: an install token and a CSR traded for a certificate the broker accepts.

Everything runs for real: the whole cloud (both store backends), an aiohttp client trusting the
cloud's CA, CSRs made with ``cryptography``, and a paho client that connects with the certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs import (
    Identity,
    Status,
    build_csr,
    generate_private_key,
)
from management.bootstrap import ensure_pki
from management.cloud import Cloud
from management.errors import NotFound
from management.store import Kind, Resource
from management.tokens import ActivationClaims, ActivationKind, TokenSigner
from tests.broker.clients import MqttClient
from tests.management.activation import https_session, make_csr, save_creds
from tests.support.cloud import Api, RunningCloud, cloud_settings
from tests.support.db import Database


@pytest.fixture
async def https(cloud: RunningCloud) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client for the activation endpoint."""
    async with https_session(cloud.ca.ca_path) as session:
        yield session


async def activate(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    """``(status, JSON answer)`` of ``POST /v1/activate``."""
    async with session.post(url + "/v1/activate", json=body) as response:
        return response.status, await response.json()


async def new_node(api: Api, name: str) -> str:
    """Create node ``name`` and return a fresh install token for it."""
    status, body = await api.call("POST", "/nodes", {"name": name})
    assert status == 201, body
    return await install_token(api, name)


async def install_token(api: Api, name: str) -> str:
    """The token of the node's install command."""
    status, body = await api.call("GET", f"/nodes/{name}/init")
    assert status == 200, body
    token: str = body["token"]
    assert f"--token {token}" in body["cmd"]
    return token


def flip(text: str, index: int) -> str:
    """``text`` with the base64url character at ``index`` changed to another one."""
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


# -- the happy path --------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["empty", "own-cn"])
async def test_activation_issues_the_nodes_certificate(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession, tmp_path: Path, subject: str
) -> None:
    """A token and a CSR give a certificate naming the token's node, the CA and the broker."""
    token = await new_node(api, "gw-1")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [] if subject == "empty" else [x509.NameAttribute(NameOID.COMMON_NAME, "default.gw-1")]
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr(key, names)}
    )
    assert status == 201, answer
    assert set(answer) == {"certificate", "ca", "broker", "nodeId"}
    assert answer["nodeId"] == "default.gw-1"
    assert answer["broker"] == {"host": "localhost", "port": cloud.mqtt_port}
    assert answer["ca"].encode() == cloud.ca.certificate_pem
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert Identity.from_certificate(certificate) == Identity.node("default", "gw-1")
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in common_names] == ["default.gw-1"]
    assert certificate.public_key() == key.public_key()
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime >= timedelta(days=cloud.settings.pki.node_cert_days)


async def test_activated_node_connects_to_the_broker(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With the activation's certificate and its own key, a node connects as ``<ns>.<name>``."""
    token = await new_node(api, "gw-1")
    key = ec.generate_private_key(ec.SECP256R1())
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr(key)}
    )
    assert status == 201, answer
    creds = save_creds(tmp_path / "node", answer, key)
    client = MqttClient(cloud.mqtt_port, "default.gw-1", ca=cloud.ca.ca_path, creds=creds)
    try:
        assert await asyncio.to_thread(client.try_connect) == (0, False)
    finally:
        await asyncio.to_thread(client.close)
    other = MqttClient(cloud.mqtt_port, "default.gw-2", ca=cloud.ca.ca_path, creds=creds)
    try:
        result = await asyncio.to_thread(other.try_connect)
        assert result is None or result[0] != 0, "the certificate let a node pose as another"
    finally:
        await asyncio.to_thread(other.close)


async def test_node_cert_days_sets_the_certificates_lifetime(
    database: Database, tmp_path: Path
) -> None:
    """The certificate lives ``pki.node_cert_days`` days, not the CA's default."""
    settings = cloud_settings(tmp_path / "data", database.url)
    settings = dataclasses.replace(
        settings, pki=dataclasses.replace(settings.pki, node_cert_days=30)
    )
    ca, files = ensure_pki(settings)
    async with Cloud(settings, ca, files) as cloud:
        running = RunningCloud(cloud, settings, ca, database)
        async with aiohttp.ClientSession() as plain, https_session(ca.ca_path) as session:
            api = Api(plain, running.api_url, "default", await running.token("default"))
            token = await new_node(api, "gw-1")
            status, answer = await activate(
                session, running.activation_url, {"token": token, "csr": make_csr()}
            )
    assert status == 201, answer
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=31)


# -- tokens refused --------------------------------------------------------------------------------


async def test_a_token_works_once(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """Replaying a used token is refused with 401."""
    token = await new_node(api, "gw-1")
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 201, answer
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 401, answer
    assert answer["code"] == "Unauthorized"
    assert "used already" in answer["message"]
    assert "'baetyl node init gw-1'" in answer["message"]
    assert token not in answer["message"]


async def test_a_token_raced_twice_activates_once(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """The same token sent twice at once gives one certificate and one 401, never a 500."""
    token = await new_node(api, "gw-1")
    results = await asyncio.gather(
        *(
            activate(https, cloud.activation_url, {"token": token, "csr": make_csr()})
            for _ in range(4)
        )
    )
    assert sorted(status for status, _ in results) == [201, 401, 401, 401], results


async def test_a_forged_token_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A token whose signature was altered, or made with another key, is refused with 401."""
    token = await new_node(api, "gw-1")
    signed, _, mac = token.rpartition(".")
    altered = f"{signed}.{flip(mac, 10)}"
    other = TokenSigner(secrets.token_bytes(32)).sign(
        ActivationClaims.new(ActivationKind.NODE, "default", "gw-1", now=int(time.time()))
    )
    for forged in (altered, other):
        status, answer = await activate(
            https, cloud.activation_url, {"token": forged, "csr": make_csr()}
        )
        assert status == 401, answer
        assert "not genuine" in answer["message"]
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 201, "a forgery used up the genuine token"


async def test_a_garbled_token_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A token that is not one at all (or an API token) is refused with 401."""
    for garbled in ("bact1.nope", "hello", await cloud.token("default")):
        status, answer = await activate(
            https, cloud.activation_url, {"token": garbled, "csr": make_csr()}
        )
        assert status == 401, (garbled, answer)


async def test_an_expired_token_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A genuine token whose lifetime is over is refused with 401."""
    await new_node(api, "gw-1")
    now = int(time.time())
    claims = ActivationClaims(
        ActivationKind.NODE, "default", "gw-1", secrets.token_hex(16), now - 7200, now - 60
    )
    token = cloud.context.signer.sign(claims)
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 401, answer
    assert "expired" in answer["message"]


async def test_a_batch_token_cannot_activate_a_node(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A genuine token of another kind (a batch's) is refused with 401."""
    await new_node(api, "gw-1")
    claims = ActivationClaims.new(ActivationKind.BATCH, "default", "gw-1", now=int(time.time()))
    token = cloud.context.signer.sign(claims)
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 401, answer


async def test_a_token_of_a_deleted_node_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A token for a node deleted since it was made is refused with 404."""
    token = await new_node(api, "gw-1")
    status, _ = await api.call("DELETE", "/nodes/gw-1")
    assert status == 204
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 404, answer
    assert answer["code"] == "NotFound"


async def test_revoked_install_commands_are_refused_and_new_ones_work(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """DELETE .../init: every install command issued before it is refused (401), even after
    the node and its properties are updated; one issued after it (in the same second too)
    activates."""
    leaked = await new_node(api, "gw-1")
    also_old = await install_token(api, "gw-1")
    status, _ = await api.call("DELETE", "/nodes/gw-1/init")
    assert status == 204
    fresh = await install_token(api, "gw-1")  # within the same second, most likely
    status, view = await api.call("PUT", "/nodes/gw-1", {"name": "gw-1", "labels": {"a": "b"}})
    assert status == 200, view
    assert "installGeneration" not in view  # kept by the server, not shown
    body = {"desire": {"k": "v"}}
    assert (await api.call("PUT", "/nodes/gw-1/properties", body))[0] == 200
    for token in (leaked, also_old):
        status, answer = await activate(
            https, cloud.activation_url, {"token": token, "csr": make_csr()}
        )
        assert status == 401, answer
        assert "revoked" in answer["message"]
        assert "'baetyl node init gw-1'" in answer["message"]
        assert "/v1/" not in answer["message"]  # the operator's command, not the HTTP route
    status, answer = await activate(
        https, cloud.activation_url, {"token": fresh, "csr": make_csr()}
    )
    assert status == 201, answer
    assert (await api.call("DELETE", "/nodes/nope/init"))[0] == 404


async def test_a_client_cannot_set_the_revocation_itself(api: Api) -> None:
    """The field is the server's: a client body carrying it is refused, on create and update."""
    body = {"name": "gw-1", "installGeneration": 0}
    status, answer = await api.call("POST", "/nodes", body)
    assert status == 400, answer
    assert (await api.call("POST", "/nodes", {"name": "gw-1"}))[0] == 201
    status, answer = await api.call("PUT", "/nodes/gw-1", body)
    assert status == 400, answer


# -- bodies refused --------------------------------------------------------------------------------


async def test_a_malformed_csr_is_refused_and_the_token_kept(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A CSR that cannot be read is a 400 naming ``csr``; the token still works afterwards."""
    token = await new_node(api, "gw-1")
    good = make_csr()
    lines = good.splitlines()
    garbled = "\n".join([lines[0], lines[1][:20] + "AAAA" + lines[1][24:], *lines[2:]]) + "\n"
    for bad in (
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        garbled,
    ):
        status, answer = await activate(https, cloud.activation_url, {"token": token, "csr": bad})
        assert status == 400, (bad, answer)
        assert answer["field"] == "csr", answer
    status, answer = await activate(https, cloud.activation_url, {"token": token, "csr": good})
    assert status == 201, answer


async def test_a_weak_rsa_key_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A CSR with an RSA-1024 key is a 400 naming ``csr`` and the key size."""
    token = await new_node(api, "gw-1")
    # The weak key is what is under test.
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr(weak)}
    )
    assert status == 400, answer
    assert answer["field"] == "csr"
    assert "RSA-1024" in answer["message"]


async def test_a_csr_claiming_another_identity_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A CSR whose subject names another node is a 400 (ARCHITECTURE.md: never read from it)."""
    token = await new_node(api, "gw-1")
    for names in (
        [x509.NameAttribute(NameOID.COMMON_NAME, "default.gw-2")],
        [x509.NameAttribute(NameOID.COMMON_NAME, "other.gw-1")],
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")],
    ):
        status, answer = await activate(
            https, cloud.activation_url, {"token": token, "csr": make_csr(subject=names)}
        )
        assert status == 400, answer
        assert answer["field"] == "csr"
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr()}
    )
    assert status == 201, answer
    assert answer["nodeId"] == "default.gw-1"


async def test_missing_fields_are_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A body without the token or the CSR, with extra fields, or not JSON, is a 400."""
    token = await new_node(api, "gw-1")
    csr = make_csr()
    for body, field in (
        ({"csr": csr}, "token"),
        ({"token": token}, "csr"),
        ({}, None),
        ({"token": token, "csr": csr, "node": "gw-2"}, None),
        ([token, csr], None),
    ):
        status, answer = await activate(https, cloud.activation_url, body)
        assert status == 400, (body, answer)
        if field is not None:
            assert answer.get("field") == field, answer
    async with https.post(cloud.activation_url + "/v1/activate", data=b"{") as response:
        assert response.status == 400
    status, answer = await activate(https, cloud.activation_url, {"token": token, "csr": csr})
    assert status == 201, answer


async def test_activation_is_https_only(cloud: RunningCloud) -> None:
    """The activation port speaks only TLS: a plain HTTP request gets no answer."""
    url = cloud.activation_url.replace("https://", "http://") + "/v1/activate"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url, json={}) as response:
                await response.read()


# -- revocation ------------------------------------------------------------------------------------


async def test_deleting_a_node_disconnects_it_for_good(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Deleting a node revokes its certificate: its connection closes within 2 s, for good."""
    assert cloud.settings.broker.crl_poll_interval <= 0.25
    token = await new_node(api, "gw-1")
    key = ec.generate_private_key(ec.SECP256R1())
    status, answer = await activate(
        https, cloud.activation_url, {"token": token, "csr": make_csr(key)}
    )
    assert status == 201, answer
    creds = save_creds(tmp_path / "node", answer, key)
    client = MqttClient(cloud.mqtt_port, "default.gw-1", ca=cloud.ca.ca_path, creds=creds)
    try:
        await asyncio.to_thread(client.connect)
        status, _ = await api.call("DELETE", "/nodes/gw-1")
        assert status == 204
        started = time.monotonic()
        assert await asyncio.to_thread(client.disconnected.wait, 2.0), "still connected after 2 s"
        assert time.monotonic() - started < 2.0
    finally:
        await asyncio.to_thread(client.close)
    again = MqttClient(cloud.mqtt_port, "default.gw-1", ca=cloud.ca.ca_path, creds=creds)
    try:
        result = await asyncio.to_thread(again.try_connect)
        assert result is None or result[0] != 0, "a revoked certificate connected again"
    finally:
        await asyncio.to_thread(again.close)


async def test_a_certificate_issued_for_a_node_deleted_meanwhile_is_revoked(
    cloud: RunningCloud,
) -> None:
    """Activation checks that the node exists, then issues; a node deleted in between must not
    keep the certificate (the delete's revocations ran before it existed). Issuing checks again
    afterwards: for a node that is gone, the new certificate is revoked and the answer is 404."""
    ctx = cloud.context
    await ctx.store.ensure_namespace("acme")
    await ctx.store.create(Resource("acme", Kind.NODE, "kept"))
    kept, gone = Identity.node("acme", "kept"), Identity.node("acme", "gone")

    issued = await ctx.issue_node_certificate(build_csr(generate_private_key()), kept)
    assert issued.record.status is Status.VALID
    with pytest.raises(NotFound, match="no longer exists"):
        await ctx.issue_node_certificate(build_csr(generate_private_key()), gone)
    records = [r for r in ctx.ca.records() if r.identity == gone]
    assert [r.status for r in records] == [Status.REVOKED]
    assert [r.status for r in ctx.ca.records() if r.identity == kept] == [Status.VALID]

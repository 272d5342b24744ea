"""``POST /v1/broker-certificate``: a node's broker gets a server certificate from the device CA.

The whole cloud runs; the caller is a real HTTPS client with a client certificate (mutual TLS):
a node's from the cloud CA, or something else that must be refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import Status
from tests.broker.helpers import Creds, _local, issue_node
from tests.management.activation import make_csr
from tests.management.nodes import create
from tests.support.cloud import Api, RunningCloud

HOSTS = ["gw-1.local", "192.168.1.10", "127.0.0.1", "localhost"]
Session = Callable[[Creds | None], AbstractAsyncContextManager[aiohttp.ClientSession]]


@pytest.fixture
def mtls(cloud: RunningCloud) -> Session:
    """An HTTPS session trusting the cloud CA, presenting ``creds`` as its client certificate."""

    def make(creds: Creds | None) -> aiohttp.ClientSession:
        context = ssl.create_default_context(cafile=str(cloud.ca.ca_path))
        if creds is not None:
            context.load_cert_chain(creds.cert, creds.key)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

    return make


async def ask(
    session: aiohttp.ClientSession, cloud: RunningCloud, body: Any
) -> tuple[int, dict[str, Any]]:
    url = cloud.activation_url + "/v1/broker-certificate"
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


async def test_a_node_gets_its_brokers_certificate_from_the_device_ca(
    cloud: RunningCloud, api: Api, mtls: Session, tmp_path: Path
) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    creds = await asyncio.to_thread(issue_node, cloud.ca, tmp_path / "node", "default", "gw-1")
    key = ec.generate_private_key(ec.SECP256R1())
    async with mtls(creds) as session:
        status, answer = await ask(session, cloud, {"csr": make_csr(key), "hosts": HOSTS})
    assert status == 201, answer
    device_ca = cloud.context.device_ca
    assert answer["ca"].encode() == device_ca.certificate_pem
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    certificate.verify_directly_issued_by(device_ca.certificate)
    assert certificate.public_key() == key.public_key()
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == ["broker.default.gw-1"]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-1.local", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.10"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    record = device_ca.record(certificate.serial_number)
    assert record.status is Status.VALID
    # The cloud CA issued nothing: the cloud broker can never be impersonated with it.
    assert all(r.serial != certificate.serial_number for r in cloud.ca.records())


@pytest.mark.parametrize(
    ("hosts", "field"),
    [
        ([], "hosts"),
        ([f"h{i}.local" for i in range(17)], "hosts"),
        (["gw 1"], "hosts[0]"),
        (["ok.local", "bad_host!"], "hosts[1]"),
        (["-leading.dash"], "hosts[0]"),
        ("gw-1.local", "hosts"),
    ],
)
async def test_bad_hosts_are_refused(
    cloud: RunningCloud, api: Api, mtls: Session, tmp_path: Path, hosts: Any, field: str
) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    creds = await asyncio.to_thread(issue_node, cloud.ca, tmp_path / "node", "default", "gw-1")
    before = len(cloud.context.device_ca.records())
    async with mtls(creds) as session:
        status, answer = await ask(session, cloud, {"csr": make_csr(), "hosts": hosts})
    assert status == 400, answer
    assert answer["field"] == field
    assert len(cloud.context.device_ca.records()) == before  # nothing issued


async def test_a_csr_claiming_another_name_is_refused(
    cloud: RunningCloud, api: Api, mtls: Session, tmp_path: Path
) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    creds = await asyncio.to_thread(issue_node, cloud.ca, tmp_path / "node", "default", "gw-1")
    names = [x509.NameAttribute(NameOID.COMMON_NAME, "broker.default.gw-2")]
    async with mtls(creds) as session:
        status, answer = await ask(session, cloud, {"csr": make_csr(subject=names),
                                                    "hosts": HOSTS})  # fmt: skip
    assert status == 400, answer
    assert answer["field"] == "csr"


async def test_only_a_node_may_ask(
    cloud: RunningCloud, api: Api, mtls: Session, tmp_path: Path
) -> None:
    """No client certificate: 401; an operator's: 403; a deleted node's: 401 (revoked)."""
    body = {"csr": make_csr(), "hosts": HOSTS}
    async with mtls(None) as session:
        status, answer = await ask(session, cloud, body)
    assert status == 401, answer
    operator = await asyncio.to_thread(cloud.ca.issue_operator, "alice")
    creds = await asyncio.to_thread(_local, tmp_path / "operator", operator, "operator:alice")
    async with mtls(creds) as session:
        status, answer = await ask(session, cloud, body)
    assert status == 403, answer
    await create(api, "nodes", {"name": "gw-1"})
    node = await asyncio.to_thread(issue_node, cloud.ca, tmp_path / "node", "default", "gw-1")
    assert (await api.call("DELETE", "/nodes/gw-1"))[0] == 204
    async with mtls(node) as session:
        status, answer = await ask(session, cloud, body)
    assert status == 401, answer

"""Devices in the management API: CRUD, checks, password, certificates, and what nodes get.

The whole cloud runs (both store backends); nodes are real MQTT clients of the cloud broker that
ask for their devices with ``resource/get``; certificates are checked with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from broker import RefusalReason
from certs import (
    Identity,
    Status,
    build_csr,
    generate_private_key,
    write_private_file,
    write_public_file,
)
from certs.keys import private_key_pem
from management.cli.resources import render_devices, render_routes
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds
from tests.management.activation import make_csr
from tests.management.nodes import ConnectNode, create, node_at, ref
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until


async def device(api: Api, name: str, node: str, **extra: Any) -> dict[str, Any]:
    return await create(api, "devices", {"name": name, "node": node, **extra})


async def test_device_crud_with_default_topics(api: Api) -> None:
    """A device is created with the default topics, listed by selector, updated and deleted."""
    await create(api, "nodes", {"name": "gw-1"})
    created = await device(api, "thermo-1", "gw-1", labels={"site": "paris"})
    assert created["node"] == "gw-1"
    assert created["topics"] == {
        "publish": ["devices/{device}/#"],
        "subscribe": ["devices/{device}/#"],
    }
    assert created["password"] is False
    assert created["certificates"] == []
    assert created["online"] is False
    assert created["since"] is None
    await device(api, "thermo-2", "gw-1", labels={"site": "lyon"})
    status, page = await api.call("GET", "/devices", params={"selector": "site=paris"})
    assert status == 200
    assert [item["name"] for item in page["items"]] == ["thermo-1"]
    body = {"name": "thermo-1", "node": "gw-1", "topics": {"publish": ["devices/{device}/t"]}}
    status, updated = await api.call("PUT", "/devices/thermo-1", body)
    assert status == 200, updated
    assert updated["topics"]["publish"] == ["devices/{device}/t"]
    assert updated["topics"]["subscribe"] == ["devices/{device}/#"]
    assert int(updated["version"]) > int(created["version"])
    status, _ = await api.call("DELETE", "/devices/thermo-1")
    assert status == 204
    status, answer = await api.call("GET", "/devices/thermo-1")
    assert status == 404, answer


@pytest.mark.parametrize(
    ("topics", "field", "words"),
    [
        ({"publish": ["devices/{name}/x"]}, "topics.publish[0]", "{name}"),
        ({"subscribe": ["$SYS/#"]}, "topics.subscribe[0]", "starts with '$'"),
        ({"publish": ["a/#/b"]}, "topics.publish[0]", "not a valid MQTT topic filter"),
        ({"publish": ["a/b+"]}, "topics.publish[0]", "not a valid MQTT topic filter"),
        ({"publish": [""]}, "topics.publish[0]", "empty"),
        ({"publish": [f"t/{i}" for i in range(33)]}, "topics.publish", "at most 32"),
        ({"subscribe": ["a/{device"]}, "topics.subscribe[0]", "unmatched brace"),
    ],
)
async def test_bad_topics_are_refused_with_the_reason(
    api: Api, topics: dict[str, Any], field: str, words: str
) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    body = {"name": "thermo-1", "node": "gw-1", "topics": topics}
    status, answer = await api.call("POST", "/devices", body)
    assert status == 422, answer
    assert answer["field"] == field
    assert words in answer["message"]
    status, _ = await api.call("GET", "/devices/thermo-1")
    assert status == 404  # nothing stored


async def test_a_device_needs_an_existing_node_which_cannot_change(api: Api) -> None:
    status, answer = await api.call("POST", "/devices", {"name": "thermo-1", "node": "nowhere"})
    assert status == 422, answer
    assert answer["field"] == "node"
    assert "no node named 'nowhere'" in answer["message"]
    await create(api, "nodes", {"name": "gw-1"})
    await create(api, "nodes", {"name": "gw-2"})
    await device(api, "thermo-1", "gw-1")
    status, answer = await api.call("PUT", "/devices/thermo-1", {"node": "gw-2"})
    assert status == 422, answer
    assert "delete the device and create it on the other node" in answer["message"]


async def test_password_is_shown_once_and_kept_as_a_scrypt_hash(
    api: Api, cloud: RunningCloud, caplog: pytest.LogCaptureFixture
) -> None:
    """The password is answered once; reads say only that there is one; the stored hash is in
    the contract's format and verifies with hashlib.scrypt."""
    await create(api, "nodes", {"name": "gw-1"})
    before = await device(api, "thermo-1", "gw-1")
    status, answer = await api.call("POST", "/devices/thermo-1/password")
    assert status == 201, answer
    assert answer["username"] == "thermo-1"
    # The device CA, which a password device verifies its node's broker with.
    assert answer["ca"].encode() == cloud.context.devices_ca.certificate_pem
    password = answer["password"]
    assert len(password) >= 20
    status, read = await api.call("GET", "/devices/thermo-1")
    assert read["password"] is True
    assert int(read["version"]) > int(before["version"])
    assert password not in str(read)
    assert "scrypt" not in str(read)
    status, page = await api.call("GET", "/devices")
    assert password not in str(page)
    assert "scrypt" not in str(page)
    assert password not in caplog.text

    stored = await cloud.context.store.get("default", _kind("device"), "thermo-1")
    scheme, n, r, p, salt, digest = stored.body["passwordHash"].split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    expected = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=16384, r=8, p=1,
                              dklen=32)  # fmt: skip
    assert base64.b64decode(digest, validate=True) == expected

    status, again = await api.call("POST", "/devices/thermo-1/password")
    assert status == 201
    assert again["password"] != password
    status, _ = await api.call("DELETE", "/devices/thermo-1/password")
    assert status == 204
    status, read = await api.call("GET", "/devices/thermo-1")
    assert read["password"] is False


def _kind(name: str) -> Any:
    from management.store import Kind

    return Kind(name)


async def test_certificate_names_the_clouds_identity_and_is_revoked(
    api: Api, cloud: RunningCloud
) -> None:
    """The CSR's key gets a device-CA certificate for (namespace, node, device) whatever the
    CSR asked; its serial is listed; DELETE unlists and revokes it."""
    await create(api, "nodes", {"name": "gw-1"})
    await device(api, "thermo-1", "gw-1")
    key = ec.generate_private_key(ec.SECP256R1())
    status, answer = await api.call("POST", "/devices/thermo-1/certificates",
                                    {"csr": make_csr(key)})  # fmt: skip
    assert status == 201, answer
    device_ca = cloud.context.device_ca
    assert answer["ca"].encode() == device_ca.certificate_pem
    assert answer["ca"].encode() != cloud.ca.certificate_pem
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert Identity.from_certificate(certificate) == Identity.device("default", "gw-1", "thermo-1")
    assert certificate.public_key() == key.public_key()
    certificate.verify_directly_issued_by(device_ca.certificate)
    assert answer["serial"] == format(certificate.serial_number, "x")
    status, read = await api.call("GET", "/devices/thermo-1")
    assert [c["serial"] for c in read["certificates"]] == [answer["serial"]]

    # A CSR claiming another identity is refused, nothing listed.
    names = [x509.NameAttribute(x509.NameOID.COMMON_NAME, "default.gw-1.other")]
    status, refused = await api.call("POST", "/devices/thermo-1/certificates",
                                     {"csr": make_csr(subject=names)})  # fmt: skip
    assert status == 400, refused
    assert refused["field"] == "csr"

    status, _ = await api.call("DELETE", f"/devices/thermo-1/certificates/{answer['serial']}")
    assert status == 204
    assert device_ca.record(certificate.serial_number).status is Status.REVOKED
    status, read = await api.call("GET", "/devices/thermo-1")
    assert read["certificates"] == []
    status, missing = await api.call("DELETE", f"/devices/thermo-1/certificates/{answer['serial']}")
    assert status == 404, missing


async def test_deleting_a_device_revokes_its_certificates(api: Api, cloud: RunningCloud) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    await device(api, "thermo-1", "gw-1")
    serials = []
    for _ in range(2):
        status, answer = await api.call("POST", "/devices/thermo-1/certificates",
                                        {"csr": make_csr()})  # fmt: skip
        assert status == 201, answer
        serials.append(int(answer["serial"], 16))
    status, _ = await api.call("DELETE", "/devices/thermo-1")
    assert status == 204
    for serial in serials:
        assert cloud.context.device_ca.record(serial).status is Status.REVOKED


async def test_a_node_with_devices_cannot_be_deleted(api: Api) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    await device(api, "thermo-1", "gw-1")
    await device(api, "thermo-2", "gw-1")
    status, answer = await api.call("DELETE", "/nodes/gw-1")
    assert status == 409, answer
    assert "thermo-1, thermo-2" in answer["message"]
    for name in ("thermo-1", "thermo-2"):
        assert (await api.call("DELETE", f"/devices/{name}"))[0] == 204
    assert (await api.call("DELETE", "/nodes/gw-1"))[0] == 204


async def test_the_cloud_broker_refuses_a_device_certificate(
    api: Api, cloud: RunningCloud, tmp_path: Path
) -> None:
    """A device certificate never reaches the cloud broker: the TLS handshake refuses it (the
    broker does not trust the device CA), counted as an unknown CA."""
    await create(api, "nodes", {"name": "gw-1"})
    await device(api, "thermo-1", "gw-1")
    key = generate_private_key()
    status, answer = await api.call("POST", "/devices/thermo-1/certificates",
                                    {"csr": build_csr(key).decode()})  # fmt: skip
    assert status == 201, answer
    issued = cloud.context.device_ca.record(int(answer["serial"], 16))
    assert issued.status is Status.VALID
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    directory = tmp_path / "device"
    directory.mkdir()
    cert, key_file = directory / "device.crt", directory / "device.key"
    write_public_file(cert, (answer["certificate"] + answer["ca"]).encode())
    write_private_file(key_file, private_key_pem(key))
    creds = Creds("default.gw-1.thermo-1", cert, key_file, certificate.serial_number)
    broker = cloud.cloud.broker
    assert broker is not None
    before = broker.stats().refusals.get(RefusalReason.UNKNOWN_CA, 0)
    client = MqttClient(cloud.mqtt_port, "default.gw-1.thermo-1", ca=cloud.ca.ca_path, creds=creds)
    try:
        assert await asyncio.to_thread(client.try_connect) is None  # no CONNACK: TLS refused
    finally:
        await asyncio.to_thread(client.close)
    await until(lambda: broker.stats().refusals.get(RefusalReason.UNKNOWN_CA, 0) > before)


# -- what nodes get --------------------------------------------------------------------------------


async def test_desired_state_names_the_nodes_devices_and_resource_get_answers_them(
    api: Api, connect_node: ConnectNode
) -> None:
    """A device's node gets it in its desired state and by resource/get (ACL expanded,
    credentials); a credential change is a new version pushed; another node's device is not
    found, and a stale version neither."""
    gw1 = await node_at(api, connect_node, "gw-1")
    gw2 = await node_at(api, connect_node, "gw-2")
    created = await device(api, "thermo-1", "gw-1",
                           topics={"publish": ["devices/{device}/telemetry"]})  # fmt: skip
    desired = await gw1.desire()
    assert desired["devices"] == [ref("thermo-1", created["version"])]
    await gw2.nothing()

    status, password = await api.call("POST", "/devices/thermo-1/password")
    assert status == 201
    status, issued = await api.call("POST", "/devices/thermo-1/certificates", {"csr": make_csr()})
    assert status == 201
    status, read = await api.call("GET", "/devices/thermo-1")
    # Each credential change pushed a new version.
    await gw1.desire()
    assert (await gw1.desire())["devices"] == [ref("thermo-1", read["version"])]

    spec = await gw1.spec("device", "thermo-1", read["version"])
    assert spec["name"] == "thermo-1"
    assert spec["publish"] == ["devices/thermo-1/telemetry"]
    assert spec["subscribe"] == ["devices/thermo-1/#"]
    assert spec["certificates"] == [issued["serial"]]
    from management.dataplane import verify_password

    assert verify_password(password["password"], spec["passwordHash"])
    await gw2.refused("device", "thermo-1", read["version"])  # not its device
    await gw1.refused("device", "thermo-1", created["version"])  # a stale version

    status, _ = await api.call("DELETE", "/devices/thermo-1")
    assert status == 204
    assert "devices" not in await gw1.desire()


async def test_device_presence_comes_from_the_nodes_report(
    api: Api, connect_node: ConnectNode
) -> None:
    """``online``/``since`` of a device are what its node reported under ``devices``."""
    gw1 = await node_at(api, connect_node, "gw-1")
    await device(api, "thermo-1", "gw-1")
    await device(api, "thermo-2", "gw-1")
    report = {
        "reported": {
            "devices": {
                "thermo-1": {"online": True, "since": 1765000000.5},
                "thermo-2": {"online": False, "since": None},  # never seen
            },
            "routes": {"up": {"forwarded": 1, "failed": 0, "lastError": None}},
        }
    }
    await asyncio.to_thread(gw1.client.subscribe, gw1.topic("report/accepted"), 1)
    await asyncio.to_thread(gw1.client.publish, gw1.topic("report"), json.dumps(report).encode(), 1)
    await asyncio.to_thread(gw1.client.receive_on, gw1.topic("report/accepted"))
    _status, read = await api.call("GET", "/devices/thermo-1")
    assert (read["online"], read["since"]) == (True, 1765000000.5)
    _status, page = await api.call("GET", "/devices")
    online = {item["name"]: item["online"] for item in page["items"]}
    assert online == {"thermo-1": True, "thermo-2": False}
    _status, stats = await api.call("GET", "/nodes/gw-1/stats")
    # The nulls the node sent are shown, though the merge patch stored them as absent keys.
    assert stats["devices"] == report["reported"]["devices"]
    assert stats["routes"] == report["reported"]["routes"]
    _status, node = await api.call("GET", "/nodes/gw-1")
    assert render_devices(node).splitlines() == [
        "DEVICE     ONLINE   SINCE",
        "thermo-1   yes      2025-12-06T05:46:40Z",
        "thermo-2   no       <none>",
    ]
    assert render_routes(node).splitlines() == [
        "ROUTE   FORWARDED   QUEUED   DROPPED   FILTERED   FAILED   LAST-ERROR",
        "up      1           0        0         0          0        <none>",
    ]


async def test_the_bootstrap_makes_a_device_ca_apart_from_the_clouds(cloud: RunningCloud) -> None:
    """``<data>/device-ca/`` holds a CA of its own (key 0600 in a 0700 directory), which the
    cloud broker's TLS files do not name."""
    directory = cloud.settings.data_dir / "device-ca"
    device_ca = cloud.context.device_ca
    assert device_ca.directory == directory
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / "ca.key").stat().st_mode & 0o777 == 0o600
    subject = device_ca.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in subject] == ["pybaetyl device CA"]
    assert device_ca.certificate_pem != cloud.ca.certificate_pem
    assert cloud.cloud.files.ca == cloud.ca.ca_path
    assert device_ca.certificate_pem not in cloud.cloud.files.ca.read_bytes()


async def test_another_namespace_sees_no_device_and_binds_none_to_our_node(
    api: Api, api_for: Callable[[str], Awaitable[Api]]
) -> None:
    await create(api, "nodes", {"name": "gw-1"})
    await device(api, "thermo-1", "gw-1")
    other = await api_for("other")
    assert (await other.call("GET", "/devices/thermo-1"))[0] == 404
    assert (await other.call("POST", "/devices/thermo-1/password"))[0] == 404
    status, answer = await other.call("POST", "/devices", {"name": "thermo-1", "node": "gw-1"})
    assert status == 422, answer
    assert answer["field"] == "node"

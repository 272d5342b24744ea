"""Batch provisioning: batches on the admin API, and devices activating with a batch secret.

Everything runs for real on both store backends: the whole cloud, an HTTPS client trusting the
cloud's CA for ``POST /v1/activate/batch``, CSRs made with ``cryptography``, and a paho client
that connects to the broker with the certificate a device got.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs import Identity
from management.api.openapi import document
from management.batches import BATCH_LABEL, batch_node_name
from management.schemas import validate
from management.tokens import hash_secret
from tests.broker.clients import MqttClient
from tests.management.activation import https_session, make_csr, save_creds
from tests.support.cloud import Api, RunningCloud

BATCH = {
    "name": "paris-gateways",
    "labels": {"site": "paris"},
    "description": "The 2025 gateway order",
    "fingerprintKind": "serialNumber",
    "quota": 3,
}


@pytest.fixture
async def https(cloud: RunningCloud) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client for the activation endpoint."""
    async with https_session(cloud.ca.ca_path) as session:
        yield session


async def new_batch(api: Api, **changes: Any) -> dict[str, Any]:
    """Create a batch (``BATCH`` with ``changes``) and return the create call's answer."""
    status, body = await api.call("POST", "/batches", {**BATCH, **changes})
    assert status == 201, body
    created: dict[str, Any] = body
    return created


def request_for(
    batch: dict[str, Any], fingerprint: str, /, *, csr: str | None = None, **changes: str
) -> dict[str, str]:
    """The activation body a device of ``batch`` sends."""
    body = {
        "namespace": batch["namespace"],
        "batch": batch["name"],
        "fingerprint": fingerprint,
        "secret": batch["secret"],
        "csr": csr or make_csr(),
    }
    return {**body, **changes}


async def activate(
    cloud: RunningCloud, session: aiohttp.ClientSession, body: Any
) -> tuple[int, Any]:
    """``(status, JSON answer)`` of ``POST /v1/activate/batch``."""
    async with session.post(cloud.activation_url + "/v1/activate/batch", json=body) as response:
        return response.status, await response.json()


async def read(api: Api, path: str) -> Any:
    """The body of ``GET /v1<path>``, which must answer 200."""
    status, body = await api.call("GET", path)
    assert status == 200, body
    return body


def serial(answer: dict[str, Any]) -> int:
    """The serial number of the certificate an activation returned."""
    return x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number


# -- admin API -------------------------------------------------------------------------------------


async def test_create_list_get_and_delete(api: Api) -> None:
    """A batch is created with its secret, listed and read without it, and deleted."""
    created = await new_batch(api, whitelist=["GW-1", "GW-2"])
    validate("BatchCreated", created)
    assert created["name"] == "paris-gateways"
    assert created["namespace"] == "default"
    assert created["labels"] == {"site": "paris"}
    assert created["whitelist"] == ["GW-1", "GW-2"]
    assert created["quota"] == 3
    assert created["activated"] == 0
    assert created["secret"].startswith("bs_")  # never "-": the CLI would take it for an option
    assert len(created["secret"]) >= 46
    await new_batch(api, name="lyon-gateways", labels={"site": "lyon"})

    status, page = await api.call("GET", "/batches")
    assert status == 200, page
    validate("BatchList", page)
    assert page["total"] == 2
    assert [item["name"] for item in page["items"]] == ["lyon-gateways", "paris-gateways"]
    for item in page["items"]:
        assert not {"secret", "secretHash", "activations"} & item.keys()
        assert item["activated"] == 0
    status, page = await api.call("GET", "/batches", params={"selector": "site=lyon"})
    assert status == 200
    assert [item["name"] for item in page["items"]] == ["lyon-gateways"]

    status, batch = await api.call("GET", "/batches/paris-gateways")
    assert status == 200, batch
    validate("Batch", batch)
    assert batch["activations"] == []
    assert not {"secret", "secretHash"} & batch.keys()
    assert {k: v for k, v in created.items() if k != "secret"} == batch

    status, _ = await api.call("DELETE", "/batches/paris-gateways")
    assert status == 204
    status, answer = await api.call("GET", "/batches/paris-gateways")
    assert status == 404, answer
    status, answer = await api.call("DELETE", "/batches/paris-gateways")
    assert status == 404, answer


async def test_the_secret_is_shown_once_and_stored_hashed(cloud: RunningCloud, api: Api) -> None:
    """Only the create call shows the secret; the table holds its hash, never the secret."""
    created = await new_batch(api)
    secret = created["secret"]
    rows = cloud.database.execute(
        "SELECT name, labels, body FROM resources WHERE kind = ?", ("batch",)
    )
    assert len(rows) == 1
    raw = " ".join(str(column) for column in rows[0])
    assert secret not in raw
    assert hash_secret(secret) in raw
    for path in ("/batches", "/batches/paris-gateways"):
        status, body = await api.call("GET", path)
        assert status == 200
        assert secret not in json.dumps(body)
        assert hash_secret(secret) not in json.dumps(body)
    other = await new_batch(api, name="second")
    assert other["secret"] != secret


async def test_batch_writes_are_checked(api: Api) -> None:
    """A name too long to prefix node names, a reserved label or a duplicate name is refused."""
    status, answer = await api.call("POST", "/batches", {**BATCH, "name": "b" * 53})
    assert status == 400, answer
    assert answer["field"] == "name"
    status, answer = await api.call("POST", "/batches", {**BATCH, "name": "with.dot"})
    assert status == 400, answer
    labels = {BATCH_LABEL: "other"}
    status, answer = await api.call("POST", "/batches", {**BATCH, "labels": labels})
    assert status == 400, answer
    assert answer["field"] == f"labels.{BATCH_LABEL}"
    status, answer = await api.call("POST", "/batches", {**BATCH, "secret": "mine"})
    assert status == 400, answer
    status, answer = await api.call("POST", "/batches", {**BATCH, "fingerprintKind": "mac"})
    assert status == 400, answer
    assert answer["field"] == "fingerprintKind"
    await new_batch(api, name="b" * 52)
    await new_batch(api)
    status, answer = await api.call("POST", "/batches", BATCH)
    assert status == 409, answer


async def test_batches_are_in_the_openapi_document() -> None:
    """The OpenAPI document lists the batch routes with their schemas."""
    paths = document()["paths"]
    assert set(paths["/v1/batches"]) == {"get", "post"}
    assert set(paths["/v1/batches/{name}"]) == {"parameters", "get", "delete"}
    created = paths["/v1/batches"]["post"]["responses"]["201"]
    assert created["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchCreated"
    }
    assert "/v1/activate/batch" not in paths


# -- activation ------------------------------------------------------------------------------------


async def test_node_name_is_derived_from_the_fingerprint() -> None:
    """The node is ``<batch>-<10 hex of sha256(fingerprint)>``, a DNS label at most 63 long."""
    digest = hashlib.sha256(b"GW-1").hexdigest()
    assert batch_node_name("paris-gateways", "GW-1") == f"paris-gateways-{digest[:10]}"
    longest = batch_node_name("b" * 52, "x" * 253)
    assert len(longest) == 63
    Identity.node("default", longest)


async def test_activation_creates_a_labelled_node_that_connects(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A device gets a node with the batch's labels, its desired state and a working certificate."""
    status, app = await api.call(
        "POST",
        "/apps",
        {"name": "web", "selector": "site=paris", "services": [{"name": "w", "image": "nginx"}]},
    )
    assert status == 201, app
    batch = await new_batch(api)
    key = ec.generate_private_key(ec.SECP256R1())
    status, answer = await activate(
        cloud, https, request_for(batch, "GW-2025-000117", csr=make_csr(key))
    )
    assert status == 201, answer
    validate("ActivationResponse", answer)
    name = batch_node_name("paris-gateways", "GW-2025-000117")
    assert answer["nodeId"] == f"default.{name}"
    assert answer["broker"] == {"host": "localhost", "port": cloud.mqtt_port}
    assert answer["ca"].encode() == cloud.ca.certificate_pem
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert Identity.from_certificate(certificate) == Identity.node("default", name)
    assert certificate.public_key() == key.public_key()

    status, node = await api.call("GET", f"/nodes/{name}")
    assert status == 200, node
    assert node["labels"] == {"site": "paris", BATCH_LABEL: "paris-gateways"}
    assert node["desire"]["apps"] == [{"name": "web", "version": "1"}]
    status, batch_now = await api.call("GET", "/batches/paris-gateways")
    assert status == 200
    assert batch_now["activated"] == 1
    [record] = batch_now["activations"]
    assert record["fingerprint"] == "GW-2025-000117"
    assert record["node"] == name
    assert record["ip"] == "127.0.0.1"
    assert record["time"].endswith("Z")

    creds = save_creds(tmp_path / "node", answer, key)
    client = MqttClient(cloud.mqtt_port, answer["nodeId"], ca=cloud.ca.ca_path, creds=creds)
    try:
        assert await asyncio.to_thread(client.try_connect) == (0, False)
    finally:
        await asyncio.to_thread(client.close)


async def test_a_wrong_secret_is_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """The wrong secret (another batch's included) is a 401 and makes no node."""
    batch = await new_batch(api)
    other = await new_batch(api, name="other")
    for secret in ("nope", other["secret"], batch["secret"] + "x"):
        status, answer = await activate(cloud, https, request_for(batch, "GW-1", secret=secret))
        assert status == 401, answer
        assert answer["code"] == "Unauthorized"
        assert secret not in answer["message"]
    page = await read(api, "/nodes")
    assert page["total"] == 0
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 0


async def test_an_unknown_batch_is_not_found(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A batch name, or a namespace, with no batch is a 404."""
    batch = await new_batch(api)
    for changes in ({"batch": "missing"}, {"namespace": "nowhere"}):
        status, answer = await activate(cloud, https, request_for(batch, "GW-1", **changes))
        assert status == 404, answer
        assert answer["code"] == "NotFound"


async def test_a_batch_works_only_in_its_namespace(
    cloud: RunningCloud, api_for: Callable[[str], Awaitable[Api]], https: aiohttp.ClientSession
) -> None:
    """A batch of namespace a cannot activate in namespace b, nor be seen from b's API."""
    api_a, api_b = await api_for("a"), await api_for("b")
    batch = await new_batch(api_a)
    await new_batch(api_b, name="other")
    status, answer = await activate(cloud, https, request_for(batch, "GW-1", namespace="b"))
    assert status == 404, answer
    status, answer = await api_b.call("GET", "/batches/paris-gateways")
    assert status == 404, answer
    page = await read(api_b, "/batches")
    assert [item["name"] for item in page["items"]] == ["other"]
    status, answer = await api_b.call("DELETE", "/batches/paris-gateways")
    assert status == 404, answer
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 201, answer
    assert answer["nodeId"].startswith("a.")


async def test_the_whitelist_is_enforced(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """With a whitelist, other fingerprints get 403 Forbidden; listed ones activate."""
    batch = await new_batch(api, whitelist=["GW-1", "GW-2"])
    status, answer = await activate(cloud, https, request_for(batch, "GW-3"))
    assert status == 403, answer
    assert answer["code"] == "Forbidden"
    assert "whitelist" in answer["message"]
    status, answer = await activate(cloud, https, request_for(batch, "GW-2"))
    assert status == 201, answer
    batch_now = await read(api, "/batches/paris-gateways")
    assert [r["fingerprint"] for r in batch_now["activations"]] == ["GW-2"]


async def test_the_quota_is_enforced(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """Past the quota a new device gets 403 QuotaExhausted; activated ones still re-activate."""
    batch = await new_batch(api, quota=2)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("GW-1", "GW-2")}
    for fingerprint, key in keys.items():
        body = request_for(batch, fingerprint, csr=make_csr(key))
        status, answer = await activate(cloud, https, body)
        assert status == 201, answer
    status, answer = await activate(cloud, https, request_for(batch, "GW-3"))
    assert status == 403, answer
    assert answer["code"] == "QuotaExhausted"
    assert "quota of 2" in answer["message"]
    body = request_for(batch, "GW-1", csr=make_csr(keys["GW-1"]))
    status, answer = await activate(cloud, https, body)
    assert status == 201, answer
    page = await read(api, "/nodes")
    assert page["total"] == 2
    zero = await new_batch(api, name="closed", quota=0)
    status, answer = await activate(cloud, https, request_for(zero, "GW-1"))
    assert status == 403, answer


async def test_reactivation_is_idempotent(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """The same fingerprint and key again get a new certificate for the same node, no quota."""
    batch = await new_batch(api, quota=1)
    key = ec.generate_private_key(ec.SECP256R1())
    status, first = await activate(cloud, https, request_for(batch, "GW-1", csr=make_csr(key)))
    assert status == 201, first
    node_before = await read(api, f"/nodes/{first['nodeId'].split('.')[1]}")
    status, second = await activate(cloud, https, request_for(batch, "GW-1", csr=make_csr(key)))
    assert status == 201, second
    assert second["nodeId"] == first["nodeId"]
    assert serial(second) != serial(first)
    node_after = await read(api, f"/nodes/{first['nodeId'].split('.')[1]}")
    assert node_after["version"] == node_before["version"]
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 1
    assert len(batch_now["activations"]) == 1


async def test_reactivation_with_another_key_cannot_take_over_the_node(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """The batch secret is shared: knowing a device's fingerprint must not yield its node.

    While the node exists, only the key of the first activation re-activates it; once an
    operator deletes the node, the device may come back with a new key (which is then bound).
    """
    batch = await new_batch(api, quota=2)
    device = ec.generate_private_key(ec.SECP256R1())
    status, first = await activate(cloud, https, request_for(batch, "GW-1", csr=make_csr(device)))
    assert status == 201, first
    before = await read(api, "/batches/paris-gateways")
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 409, answer
    assert answer["code"] == "Conflict"
    assert "another key" in answer["message"]
    assert (await read(api, "/batches/paris-gateways"))["activations"] == before["activations"]
    # The device itself still re-activates.
    status, again = await activate(cloud, https, request_for(batch, "GW-1", csr=make_csr(device)))
    assert status == 201, again
    # Deleted by an operator: a new key is accepted, bound, and the old one is refused.
    name = first["nodeId"].split(".")[1]
    assert (await api.call("DELETE", f"/nodes/{name}"))[0] == 204
    replacement = ec.generate_private_key(ec.SECP256R1())
    body = request_for(batch, "GW-1", csr=make_csr(replacement))
    status, answer = await activate(cloud, https, body)
    assert status == 201, answer
    status, answer = await activate(cloud, https, request_for(batch, "GW-1", csr=make_csr(device)))
    assert status == 409, answer
    assert (await read(api, "/batches/paris-gateways"))["activated"] == 1


async def test_reactivation_recreates_a_deleted_node(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """A recorded device whose node was deleted gets it back, labelled, without using quota."""
    batch = await new_batch(api, quota=1)
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 201, answer
    name = answer["nodeId"].split(".")[1]
    status, _ = await api.call("DELETE", f"/nodes/{name}")
    assert status == 204
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 201, answer
    status, node = await api.call("GET", f"/nodes/{name}")
    assert status == 200, node
    assert node["labels"][BATCH_LABEL] == "paris-gateways"


async def test_a_bad_csr_is_refused_and_uses_no_quota(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """An unreadable CSR, or one naming another node, is a 400 on ``csr`` with nothing recorded."""
    batch = await new_batch(api, quota=1)
    other = [x509.NameAttribute(NameOID.COMMON_NAME, "default.someone-else")]
    for csr in (
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        make_csr(subject=other),
    ):
        status, answer = await activate(cloud, https, request_for(batch, "GW-1", csr=csr))
        assert status == 400, answer
        assert answer["field"] == "csr"
    status, answer = await activate(cloud, https, request_for(batch, "GW-1", csr="not a csr"))
    assert status == 400, answer
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 0
    page = await read(api, "/nodes")
    assert page["total"] == 0
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 201, answer


async def test_bad_fingerprints_and_bodies_are_refused(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """An empty, too long or control-character fingerprint, or an odd body, is a 400."""
    batch = await new_batch(api)
    for fingerprint in ("", "x" * 254, "GW\n1"):
        status, answer = await activate(cloud, https, request_for(batch, fingerprint))
        assert status == 400, (fingerprint, answer)
        assert answer["field"] == "fingerprint"
    body = request_for(batch, "GW-1")
    status, answer = await activate(cloud, https, {**body, "node": "mine"})
    assert status == 400, answer
    del body["secret"]
    status, answer = await activate(cloud, https, body)
    assert status == 400, answer
    assert answer["field"] == "secret"
    status, answer = await activate(cloud, https, request_for(batch, "x" * 253))
    assert status == 201, answer


async def test_a_node_not_made_by_the_batch_is_not_taken_over(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """If an operator's node already has the derived name, activation is a 409 and uses no quota."""
    batch = await new_batch(api)
    name = batch_node_name("paris-gateways", "GW-1")
    status, node = await api.call("POST", "/nodes", {"name": name})
    assert status == 201, node
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 409, answer
    assert answer["code"] == "Conflict"
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 0


async def test_deleting_a_batch_keeps_its_nodes(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """After its batch is deleted, a node stays and the batch's secret activates nothing."""
    batch = await new_batch(api)
    status, answer = await activate(cloud, https, request_for(batch, "GW-1"))
    assert status == 201, answer
    status, _ = await api.call("DELETE", "/batches/paris-gateways")
    assert status == 204
    status, node = await api.call("GET", f"/nodes/{answer['nodeId'].split('.')[1]}")
    assert status == 200, node
    status, answer = await activate(cloud, https, request_for(batch, "GW-2"))
    assert status == 404, answer


async def test_concurrent_activations_never_exceed_the_quota(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """Five devices at once on a quota of three: exactly three activate, two get 403."""
    batch = await new_batch(api, quota=3)
    results = await asyncio.gather(
        *(activate(cloud, https, request_for(batch, f"GW-{i}")) for i in range(5))
    )
    assert sorted(status for status, _ in results) == [201, 201, 201, 403, 403], results
    for status, answer in results:
        if status == 403:
            assert answer["code"] == "QuotaExhausted"
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 3
    winners = {answer["nodeId"] for status, answer in results if status == 201}
    assert {f"default.{r['node']}" for r in batch_now["activations"]} == winners
    status, page = await api.call("GET", "/nodes", params={"selector": f"{BATCH_LABEL}"})
    assert status == 200, page
    assert {f"default.{item['name']}" for item in page["items"]} == winners


async def test_one_device_activating_twice_at_once_is_one_node(
    cloud: RunningCloud, api: Api, https: aiohttp.ClientSession
) -> None:
    """One fingerprint sent four times at once makes one node, one record, four certificates."""
    batch = await new_batch(api, quota=1)
    results = await asyncio.gather(
        *(activate(cloud, https, request_for(batch, "GW-1")) for _ in range(4))
    )
    assert [status for status, _ in results] == [201] * 4, results
    assert len({answer["nodeId"] for _, answer in results}) == 1
    assert len({serial(answer) for _, answer in results}) == 4
    batch_now = await read(api, "/batches/paris-gateways")
    assert batch_now["activated"] == 1
    page = await read(api, "/nodes")
    assert page["total"] == 1

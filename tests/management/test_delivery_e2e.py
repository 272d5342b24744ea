"""Registries and certificates on their way to a node: an app names them, their updates bump the
app, and a node fetches them with ``resource/get`` only when its own apps use them.

Nodes are paho clients with certificates from the running cloud's CA (``test_matching_e2e``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from management.store import Kind
from tests.management.api_samples import key_and_certificate
from tests.management.conftest import Api, RunningCloud
from tests.management.test_matching_e2e import (  # noqa: F401 # connect_node is a fixture
    ConnectNode,
    app,
    connect_node,
    create,
    node_at,
    ref,
    update,
)

PASSWORD = "registry-pw-in-clear"


def registry(name: str = "company", password: str = PASSWORD) -> dict[str, Any]:
    return {"name": name, "address": "registry.example.com:5000/ot", "username": "robot",
            "password": password}  # fmt: skip


def certificate(name: str = "plc", common_name: str = "plc.example.com") -> dict[str, Any]:
    """A certificate body with its key and a CA (another self-signed certificate)."""
    key, cert = key_and_certificate(common_name, (common_name,))
    _, ca = key_and_certificate("ca.example.com", ())
    return {"name": name, "data": {"certificate": cert, "key": key, "ca": ca}}


def user_app(name: str = "web", selector: str = "site=x", **extra: Any) -> dict[str, Any]:
    """A container app pulling with registry 'company' and mounting certificate 'plc'."""
    body = app(name, selector, {"name": "tls", "certificate": {"name": "plc"}})
    return {**body, "registries": [{"name": "company"}], **extra}


async def test_updating_a_used_registry_or_certificate_bumps_the_app(
    api: Api,
    connect_node: ConnectNode,  # noqa: F811
) -> None:
    """A registry or certificate update gives each app using it a new version, pushed to its
    nodes; an update of one no app uses pushes nothing."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "registries", registry())
    await create(api, "registries", registry("unused"))
    await create(api, "certificates", certificate())
    await create(api, "certificates", certificate("spare", "spare.example.com"))
    await create(api, "apps", user_app())
    assert await node.apps() == [ref("web", 1)]
    await update(api, "registries", registry(password="rotated"))
    assert await node.apps() == [ref("web", 2)]
    await update(api, "certificates", certificate(common_name="renewed.example.com"))
    assert await node.apps() == [ref("web", 3)]
    status, web = await api.call("GET", "/apps/web")
    assert (status, web["version"]) == (200, "3")
    await update(api, "registries", registry("unused", "x"))
    await update(api, "certificates", certificate("spare", "other.example.com"))
    await node.nothing()


async def test_a_node_fetches_the_registry_and_certificate_its_app_uses(
    cloud: RunningCloud,
    api: Api,
    connect_node: ConnectNode,  # noqa: F811
) -> None:
    """The app spec names their versions; the registry comes with its password and the
    certificate as tls.crt, tls.key and ca.crt, in clear for the node only; neither is stored
    in clear."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "registries", registry())
    body = certificate()
    await create(api, "certificates", body)
    await update(api, "certificates", body)
    await create(api, "apps", user_app())
    (wanted,) = await node.apps()
    spec = await node.spec("app", "web", wanted["version"])
    assert spec["registries"] == [{"name": "company", "version": "1"}]
    assert spec["volumes"] == [{"name": "tls", "certificate": {"name": "plc", "version": "2"}}]
    assert await node.spec("registry", "company", "1") == {
        "data": {"address": "registry.example.com:5000/ot", "username": "robot",
                 "password": PASSWORD}
    }  # fmt: skip
    files = body["data"]
    assert await node.spec("certificate", "plc", "2") == {
        "data": {"tls.crt": files["certificate"], "tls.key": files["key"], "ca.crt": files["ca"]}
    }
    await node.refused("certificate", "plc", "1")  # an old version
    for kind in (Kind.REGISTRY, Kind.CERTIFICATE):
        stored = json.dumps(
            (
                await cloud.context.store.get(
                    "default", kind, "company" if kind is Kind.REGISTRY else "plc"
                )
            ).body
        )
        assert PASSWORD not in stored
        assert "PRIVATE KEY" not in stored


async def test_a_certificate_without_a_ca_has_no_ca_file(
    api: Api,
    connect_node: ConnectNode,  # noqa: F811
) -> None:
    """ca.crt is delivered only when the certificate was stored with a CA."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    key, cert = key_and_certificate()
    await create(api, "certificates", {"name": "plc", "data": {"certificate": cert, "key": key}})
    await create(api, "apps", app("web", "site=x", {"name": "t", "certificate": {"name": "plc"}}))
    assert await node.apps() == [ref("web", 1)]
    assert await node.spec("certificate", "plc", "1") == {"data": {"tls.crt": cert, "tls.key": key}}


async def test_a_node_gets_no_registry_or_certificate_its_apps_do_not_use(
    api: Api,
    api_for: Callable[[str], Awaitable[Api]],
    connect_node: ConnectNode,  # noqa: F811
) -> None:
    """Unused ones, those of apps running elsewhere and those of another namespace (same
    names) are 404, as is a registry asked for as a certificate."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "registries", registry())
    await create(api, "registries", registry("idle"))
    await create(api, "certificates", certificate())
    await create(api, "certificates", certificate("idle", "idle.example.com"))
    await create(api, "apps", user_app("elsewhere", "site=y"))
    await create(api, "apps", app("web", "site=x"))
    assert await node.apps() == [ref("web", 1)]
    await node.refused("registry", "company", "1")
    await node.refused("certificate", "plc", "1")
    await node.refused("registry", "idle", "1")
    await node.refused("certificate", "idle", "1")
    other = await api_for("acme")
    await create(other, "nodes", {"name": "gw-1", "labels": {"site": "x"}})
    await create(other, "registries", registry("theirs"))
    await create(other, "certificates", certificate("theirs", "theirs.example.com"))
    volume = {"name": "tls", "certificate": {"name": "theirs"}}
    await create(other, "apps", {**app("web2", "site=x", volume),
                                 "registries": [{"name": "theirs"}]})  # fmt: skip
    await node.nothing()
    await node.refused("registry", "theirs", "1")
    await node.refused("certificate", "theirs", "1")
    await update(api, "apps", user_app("elsewhere", "site=x"))
    await node.apps()
    await node.refused("certificate", "company", "1")
    assert (await node.spec("registry", "company", "1"))["data"]["password"] == PASSWORD


async def test_an_app_naming_an_unknown_registry_or_certificate_is_refused(api: Api) -> None:
    """400 naming the field, as for an unknown config; nothing is stored."""
    await create(api, "registries", registry())
    await create(api, "certificates", certificate())
    cases = [
        (app("web", "site=x", {"name": "t", "certificate": {"name": "nope"}}),
         "volumes[0].certificate.name", "there is no certificate named 'nope'; create it first."),
        ({**app("web", "site=x"), "registries": [{"name": "company"}, {"name": "nope"}]},
         "registries[1].name", "there is no registry named 'nope'; create it first."),
    ]  # fmt: skip
    for body, field, message in cases:
        status, answer = await api.call("POST", "/apps", body)
        assert status == 400, answer
        assert answer["field"] == field
        assert answer["message"].endswith(message)
    both = {"name": "t", "certificate": {"name": "plc"}, "secret": {"name": "plc"}}
    status, answer = await api.call("POST", "/apps", app("web", "site=x", both))
    assert status == 400, answer
    assert answer["code"] == "ValidationFailed"
    assert "exactly one source: config, secret, certificate or hostPath" in answer["message"]
    twice = {**app("web", "site=x"), "registries": [{"name": "company"}, {"name": "company"}]}
    status, answer = await api.call("POST", "/apps", twice)
    assert (status, answer["code"]) == (400, "ValidationFailed")
    assert (await api.call("GET", "/apps"))[1]["total"] == 0


async def test_a_registry_or_certificate_in_use_cannot_be_deleted(api: Api) -> None:
    """409 naming the app until the app stops using it; then the delete goes through."""
    await create(api, "registries", registry())
    await create(api, "certificates", certificate())
    await create(api, "apps", user_app())
    for collection, name, where in (("registries", "company", "registries"),
                                    ("certificates", "plc", "volumes")):  # fmt: skip
        status, answer = await api.call("DELETE", f"/{collection}/{name}")
        assert status == 409, answer
        assert f"is used by app(s) web; remove it from their {where} first." in answer["message"]
    assert (await api.call("DELETE", "/apps/web"))[0] == 204
    assert (await api.call("DELETE", "/registries/company"))[0] == 204
    assert (await api.call("DELETE", "/certificates/plc"))[0] == 204


async def test_a_certificate_shows_its_ca_but_never_its_key(api: Api) -> None:
    """The CA is public and read back; a CA that is not PEM is refused naming data.ca."""
    body = certificate()
    created = await create(api, "certificates", body)
    assert created["data"] == {"certificate": body["data"]["certificate"],
                               "ca": body["data"]["ca"]}  # fmt: skip
    bad = {
        **body,
        "name": "bad",
        "data": {
            **body["data"],
            "ca": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        },
    }
    status, answer = await api.call("POST", "/certificates", bad)
    assert (status, answer["field"]) == (400, "data.ca"), answer

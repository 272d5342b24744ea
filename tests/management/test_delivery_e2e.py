"""Registries and certificates on their way to a node: an app names them, their updates bump the
app, and a node fetches them with ``resource/get`` only when its own apps use them.

Nodes are paho clients with certificates from the running cloud's CA (``test_matching_e2e``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from management.store import Kind, Resource
from tests.management.api_samples import key_and_certificate
from tests.management.nodes import (
    ConnectNode,
    app,
    create,
    node_at,
    ref,
    update,
)
from tests.support.cloud import Api, RunningCloud

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
    connect_node: ConnectNode,
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
    connect_node: ConnectNode,
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
    connect_node: ConnectNode,
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
    connect_node: ConnectNode,
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


async def test_registries_are_refused_on_native_and_function_apps(api: Api) -> None:
    """Only a container app pulls images: registries on another type are 400 naming the field,
    on create and on update; an empty list names none and is accepted."""
    await create(api, "registries", registry())
    native = {"name": "sensor", "selector": "site=x", "type": "native",
              "services": [{"name": "s", "command": ["/usr/bin/sensor"]}]}  # fmt: skip
    await create(api, "configs", {"name": "code", "data": {"m.py": "def f(event, context): ..."}})
    handlers = [{"name": "h", "handler": "m.f", "codeConfig": "code"}]
    function = {"name": "rules", "selector": "site=x", "type": "function",
                "services": [{"name": "f", "handlers": handlers}],
                "volumes": [{"name": "src", "config": {"name": "code"}}]}  # fmt: skip
    for body in (native, function):
        status, answer = await api.call(
            "POST", "/apps", {**body, "registries": [{"name": "company"}]}
        )
        assert (status, answer["code"], answer["field"]) == (400, "ValidationFailed", "registries")
        assert "registries apply only to container apps" in answer["message"], answer
        await create(api, "apps", {**body, "registries": []})
    await create(api, "apps", {**app("web", "site=x"), "registries": [{"name": "company"}]})
    moved = {**native, "name": "web", "registries": [{"name": "company"}]}
    status, answer = await api.call("PUT", "/apps/web", moved)
    assert (status, answer["field"]) == (400, "registries"), answer
    assert (await api.call("GET", "/apps/web"))[1]["type"] == "container"


async def test_a_stored_native_app_with_registries_leaks_no_password(
    cloud: RunningCloud,
    api: Api,
    connect_node: ConnectNode,
) -> None:
    """A native app stored with registries before the API refused them: its spec names none,
    the node is refused the registry, the registry's updates do not bump it and it is not in
    use."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "registries", registry())
    body = {"selector": "site=x", "type": "native", "replicas": 1, "workload": "deployment",
            "hostNetwork": False, "services": [{"name": "s", "command": ["/usr/bin/sensor"]}],
            "registries": [{"name": "company"}]}  # fmt: skip
    stored = await cloud.context.store.create(Resource("default", Kind.APP, "sensor", body=body))
    await cloud.context.matcher.after_app_change("default", None, stored)
    assert await node.apps() == [ref("sensor", 1)]
    spec = await node.spec("app", "sensor", "1")
    assert "registries" not in spec
    await node.refused("registry", "company", "1")
    await update(api, "registries", registry(password="rotated"))
    await node.nothing()
    assert (await api.call("GET", "/apps/sensor"))[1]["version"] == "1"
    assert (await api.call("DELETE", "/registries/company"))[0] == 204  # not in use


async def test_an_app_cannot_name_two_registries_at_one_address(api: Api) -> None:
    """An image pull secret holds one login per address: an app naming two registries at the
    same address is 400 on the second, and a registry cannot move to the address of another
    registry an app using it names."""
    await create(api, "registries", registry("a"))
    await create(api, "registries", registry("b"))
    await create(api, "registries", {**registry("c"), "address": "other.example.com"})
    both = {**app("web", "site=x"), "registries": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}
    status, answer = await api.call("POST", "/apps", both)
    assert (status, answer["code"], answer["field"]) == (400, "BadRequest", "registries[2].name")
    assert answer["message"] == (
        "registries[2].name: the registry 'b' has the address 'registry.example.com:5000/ot', as "
        "registries[1] has; an image pull secret holds one login per address, so name only one "
        "of them."
    )
    await create(
        api, "apps", {**app("web", "site=x"), "registries": [{"name": "a"}, {"name": "c"}]}
    )
    status, answer = await api.call("PUT", "/registries/c", registry("c"))
    assert (status, answer["field"]) == (400, "address"), answer
    assert "the app 'web' pulls with this registry and with the registry 'a'" in answer["message"]
    status, kept = await api.call("GET", "/registries/c")
    assert (kept["address"], kept["version"]) == ("other.example.com", "1")
    await update(api, "registries", registry("b", "x"))  # no app names b with a


async def test_a_private_key_is_refused_in_a_certificate_field(
    cloud: RunningCloud, api: Api
) -> None:
    """cryptography's loaders skip blocks that are not certificates: a PRIVATE KEY block among
    the certificates of data.ca or data.certificate is refused naming the field, never stored
    (it would be shown in clear and mounted world-readable); so is text between blocks."""
    body = certificate()
    key, cert, ca = body["data"]["key"], body["data"]["certificate"], body["data"]["ca"]
    cases = [
        ("data.ca", {"ca": ca + key + ca}, "holds a 'PRIVATE KEY' block"),
        ("data.certificate", {"certificate": cert + key + ca}, "holds a 'PRIVATE KEY' block"),
        ("data.ca", {"ca": ca + key.replace("PRIVATE KEY", "EC PRIVATE KEY") + ca},
         "holds a 'EC PRIVATE KEY' block"),
        ("data.ca", {"ca": ca + "Bag Attributes: leaked\n" + ca}, "holds text outside"),
        ("data.certificate", {"certificate": cert.replace("-----END CERTIFICATE-----",
                                                           key + "-----END CERTIFICATE-----")},
         "or a block that is not well formed"),
    ]  # fmt: skip
    for field, change, message in cases:
        sent = {**body, "data": {**body["data"], **change}}
        status, answer = await api.call("POST", "/certificates", sent)
        assert (status, answer["code"], answer["field"]) == (400, "BadRequest", field), answer
        assert message in answer["message"], answer
        assert "MII" not in answer["message"]
    assert (await api.call("GET", "/certificates"))[1]["total"] == 0
    chain = {**body, "data": {**body["data"], "certificate": cert + ca}}
    created = await create(api, "certificates", chain)
    assert created["data"]["certificate"] == cert + ca  # a chain: the certificate, then its CA
    rows = cloud.database.execute("SELECT body FROM resources WHERE kind='certificate'")
    assert "PRIVATE KEY" not in json.dumps(rows)

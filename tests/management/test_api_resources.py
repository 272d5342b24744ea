"""What each kind adds over plain CRUD: validation, references, secrets kept secret, certificates,
and the node routes (apps, stats, properties, install command)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.management.api_samples import assert_schema, key_and_certificate, sample
from tests.support.cloud import Api, RunningCloud


async def _send(api: Api, method: str, path: str, data: bytes) -> tuple[int, Any]:
    """A request whose body is exactly ``data`` (not JSON-encoded by the client)."""
    headers = api.headers({"Content-Type": "application/json"})
    async with api.session.request(
        method, api.base + "/v1" + path, data=data, headers=headers
    ) as r:
        return r.status, await r.json()


def _assert_failed(
    status: int, body: Any, field: str | None, code: str = "ValidationFailed"
) -> None:
    assert status == 400, body
    assert_schema("Error", body)
    assert body["code"] == code, body
    assert body.get("field") == field, body
    assert body["message"]


# --- request bodies -----------------------------------------------------------------------------


async def test_body_that_is_not_json_is_400(api: Api) -> None:
    """A body that is not JSON (or not UTF-8) is 400 on create and on update."""
    await api.call("POST", "/configs", sample("configs", "conf"))
    for data in (b"{", b"{'name': 'x'}", b"\xff\xfe", b"name=x"):
        status, body = await _send(api, "POST", "/configs", data)
        _assert_failed(status, body, None, "BadRequest")
        status, body = await _send(api, "PUT", "/configs/conf", data)
        _assert_failed(status, body, None, "BadRequest")


async def test_body_that_is_not_an_object_is_400(api: Api) -> None:
    """An empty body, null, an array, a string or a number is 400: the body must be an object."""
    for data in (b"", b"null", b"[]", b'[{"name": "x"}]', b'"x"', b"3"):
        status, body = await _send(api, "POST", "/nodes", data)
        _assert_failed(status, body, None, "BadRequest")
        assert "object" in body["message"]


async def test_json_that_python_reads_but_nothing_can_store_is_400(api: Api) -> None:
    """NaN and infinities (not JSON), lone surrogates (not Unicode: they failed the store's
    UTF-8 encoding with a 500) and nesting past 64 levels (5,000 deep overflowed the parser's
    recursion with a 500) are refused with 400, and nothing is stored."""
    deep = "[" * 5000 + "]" * 5000
    for text, words in (
        ('{"desire": {"x": NaN}}', "NaN"),
        ('{"desire": {"x": -Infinity}}', "Infinity"),
        ('{"desire": {"x": "\\ud800"}}', "Unicode"),
        ('{"desire": {"\\udc00": 1}}', "Unicode"),
        ('{"desire": {"x": ' + deep + "}}", "nested"),
        ('{"desire": {"x": ' + "[" * 70 + "]" * 70 + "}}", "nested"),
    ):
        for method, path in (("POST", "/configs"), ("PUT", "/nodes/gw/properties")):
            status, body = await _send(api, method, path, text.encode())
            _assert_failed(status, body, None, "BadRequest")
            assert words in body["message"], body
    status, listed = await api.call("GET", "/configs")
    assert (status, listed["total"]) == (200, 0)


async def test_schema_errors_name_the_field(api: Api) -> None:
    """A body that breaks its schema is 400 ValidationFailed naming the field at fault."""
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/apps", sample("apps", "web", services=[{"name": "web"}]), "services[0].image"),
        ("/apps", sample("apps", "web", services=[]), "services"),
        ("/apps", sample("apps", "web", replicas=-1), "replicas"),
        ("/apps", sample("apps", "web", colour="red"), "colour"),
        ("/nodes", sample("nodes", "Not_A_Name"), "name"),
        ("/nodes", sample("nodes", "gw", mode="vm"), "mode"),
        ("/nodes", sample("nodes", "gw", version="3"), "version"),
        ("/configs", {"name": "conf"}, "data"),
        ("/configs", sample("configs", "conf", data={"a/b": "x"}), 'data["a/b"]'),
        ("/secrets", sample("secrets", "s", data={"k": 1}), "data.k"),
        ("/registries", sample("registries", "r", address="https://x.io"), "address"),
        ("/certificates", sample("certificates", "c", data={"certificate": "x"}), "data.key"),
        (
            "/certificates",
            sample("certificates", "c", data={"certificate": "x", "key": key_and_certificate()[0]}),
            "data.certificate",
        ),
    ]
    for path, request, field in cases:
        status, body = await api.call("POST", path, request)
        _assert_failed(status, body, field)
    status, listed = await api.call("GET", "/apps")
    assert listed["total"] == 0, "nothing refused was stored"


async def test_update_is_validated_like_create(api: Api) -> None:
    """A PUT body is checked against the same schema as a create."""
    await api.call("POST", "/apps", sample("apps", "web"))
    status, body = await api.call(
        "PUT", "/apps/web", sample("apps", "web", services=[{"name": "web", "image": "a b"}])
    )
    _assert_failed(status, body, "services[0].image")
    status, app = await api.call("GET", "/apps/web")
    assert app["version"] == "1"


async def test_bad_labels_are_400_naming_the_label(api: Api) -> None:
    """A label key or value outside the Kubernetes syntax is 400 on that label, not on the
    selector, for every kind."""
    for collection in ("nodes", "apps", "configs"):
        status, body = await api.call(
            "POST", f"/{collection}", sample(collection, "x", labels={"bad key!": "v"})
        )
        _assert_failed(status, body, 'labels["bad key!"]')
        assert "bad key!" in body["message"]
        status, body = await api.call(
            "POST", f"/{collection}", sample(collection, "x", labels={"site": "not valid!"})
        )
        _assert_failed(status, body, "labels.site")
        assert "not valid!" in body["message"]


async def test_bad_app_selector_is_400(api: Api) -> None:
    """An app whose selector does not parse is refused on field selector."""
    status, body = await api.call("POST", "/apps", sample("apps", "web", selector="site in (a"))
    _assert_failed(status, body, "selector")


# --- references between resources ---------------------------------------------------------------


async def test_app_volume_must_reference_an_existing_config_or_secret(api: Api) -> None:
    """An app volume naming a config or secret that does not exist is 400 on that volume."""
    volumes = [
        {"name": "conf", "config": {"name": "conf"}},
        {"name": "cred", "secret": {"name": "cred"}},
    ]
    status, body = await api.call("POST", "/apps", sample("apps", "web", volumes=volumes))
    _assert_failed(status, body, "volumes[0].config.name", "BadRequest")
    await api.call("POST", "/configs", sample("configs", "conf"))
    status, body = await api.call("POST", "/apps", sample("apps", "web", volumes=volumes))
    _assert_failed(status, body, "volumes[1].secret.name", "BadRequest")
    await api.call("POST", "/secrets", sample("secrets", "cred"))
    status, body = await api.call("POST", "/apps", sample("apps", "web", volumes=volumes))
    assert status == 201, body
    assert_schema("App", body)
    assert body["volumes"] == volumes


async def test_function_app_whose_code_no_volume_mounts_is_422(api: Api) -> None:
    """A handler's codeConfig that no config volume of the app holds (or no codeConfig and no
    config volume) is refused 422 naming the function, the config and the volume to add, on
    create and on update; nothing is stored. By config name or by volume name, it is taken."""
    assert (await api.call("POST", "/configs", {"name": "code", "data": {"m.py": ""}}))[0] == 201
    handler = {"name": "hello", "handler": "m.hello", "codeConfig": "hello-code"}
    app = {
        "name": "fn",
        "type": "function",
        "services": [{"name": "python", "handlers": [{"name": "other", "handler": "m.f"},
                                                      handler]}],
        "volumes": [{"name": "src", "config": {"name": "code"}}],
    }  # fmt: skip
    status, body = await api.call("POST", "/apps", app)
    assert status == 422, body
    assert_schema("Error", body)
    assert body["code"] == "Unprocessable"
    assert body["field"] == "services[0].handlers[1].codeConfig"
    assert body["message"] == (
        "services[0].handlers[1].codeConfig: the function 'hello' takes its code from the config "
        "'hello-code', which no volume of the app mounts, so the node could not run it; add "
        '{"name": "code", "config": {"name": "hello-code"}} to volumes.'
    )
    assert (await api.call("GET", "/apps/fn"))[0] == 404

    for held in ("code", "src"):  # the config's name, or the volume's
        handler["codeConfig"] = held
        status, body = await api.call("POST", "/apps", app)
        assert status == 201, body
        assert (await api.call("DELETE", "/apps/fn"))[0] == 204

    assert (await api.call("POST", "/apps", app))[0] == 201
    handler["codeConfig"] = "hello-code"
    status, body = await api.call("PUT", "/apps/fn", app)
    assert (status, body["code"]) == (422, "Unprocessable"), body
    assert (await api.call("GET", "/apps/fn"))[1]["services"][0]["handlers"][1][
        "codeConfig"
    ] == "src"

    del handler["codeConfig"]
    app["volumes"] = []
    status, body = await api.call("PUT", "/apps/fn", app)
    assert (status, body["field"]) == (422, "services[0].handlers[0].codeConfig"), body
    assert "names no codeConfig and the app mounts no config" in body["message"]


async def test_mounted_config_and_secret_cannot_be_deleted(api: Api) -> None:
    """Deleting a config or secret that an app mounts is 409 naming the app; the mounting apps
    are listed under .../apps; once no app mounts it, it can be deleted."""
    await api.call("POST", "/configs", sample("configs", "conf"))
    await api.call("POST", "/configs", sample("configs", "unused"))
    await api.call("POST", "/secrets", sample("secrets", "cred"))
    volumes = [
        {"name": "conf", "config": {"name": "conf"}},
        {"name": "cred", "secret": {"name": "cred"}},
    ]
    for name in ("web", "api"):
        status, body = await api.call("POST", "/apps", sample("apps", name, volumes=volumes))
        assert status == 201, body
    await api.call("POST", "/apps", sample("apps", "plain"))

    for path in ("/configs/conf", "/secrets/cred"):
        status, body = await api.call("DELETE", path)
        assert status == 409, body
        assert body["code"] == "Conflict"
        assert "web" in body["message"]
        assert "api" in body["message"]
        status, users = await api.call("GET", path + "/apps")
        assert status == 200, users
        assert_schema("AppList", users)
        assert [a["name"] for a in users["items"]] == ["api", "web"]
        assert users["total"] == 2

    status, users = await api.call("GET", "/configs/unused/apps")
    assert status == 200
    assert (users["total"], users["items"]) == (0, [])
    status, body = await api.call("GET", "/configs/missing/apps")
    assert status == 404, body

    for name in ("web", "api"):
        status, body = await api.call("PUT", f"/apps/{name}", sample("apps", name))
        assert status == 200, body
    for path in ("/configs/conf", "/secrets/cred"):
        status, body = await api.call("DELETE", path)
        assert status == 204, body


async def test_config_update_bumps_the_apps_mounting_it(api: Api) -> None:
    """Changing a mounted config gives each app mounting it a new version."""
    await api.call("POST", "/configs", sample("configs", "conf"))
    volumes = [{"name": "conf", "config": {"name": "conf"}}]
    await api.call("POST", "/apps", sample("apps", "web", volumes=volumes))
    await api.call("POST", "/apps", sample("apps", "plain"))
    status, body = await api.call(
        "PUT", "/configs/conf", sample("configs", "conf", data={"app.yaml": "level: debug\n"})
    )
    assert status == 200, body
    status, web = await api.call("GET", "/apps/web")
    assert web["version"] == "2"
    status, plain = await api.call("GET", "/apps/plain")
    assert plain["version"] == "1"


async def test_text_outside_ascii_round_trips(api: Api) -> None:
    """Config data and descriptions keep non-ASCII text exactly, on both stores."""
    text = "température: 21 °C\n名前: センサー\nemoji: 🌡️\n"
    body = sample("configs", "intl", description="Réglages — 設定 🌍", data={"app.yaml": text})
    status, created = await api.call("POST", "/configs", body)
    assert status == 201, created
    _, got = await api.call("GET", "/configs/intl")
    assert got["data"] == {"app.yaml": text}
    assert got["description"] == "Réglages — 設定 🌍"


# --- secret values ------------------------------------------------------------------------------


async def test_secret_data_is_shown_only_by_its_get(api: Api, cloud: RunningCloud) -> None:
    """A secret's list entry has no data, its GET shows it in clear, and the stored row holds
    only ciphertext."""
    plaintext = "hunter2-plaintext"
    status, created = await api.call("POST", "/secrets", sample("secrets", "cred"))
    assert status == 201, created
    assert created["data"] == {"password": plaintext}
    status, got = await api.call("GET", "/secrets/cred")
    assert_schema("Secret", got)
    assert got["data"] == {"password": plaintext}
    status, listed = await api.call("GET", "/secrets")
    assert_schema("SecretList", listed)
    assert "data" not in listed["items"][0]
    assert_schema("SecretSummary", listed["items"][0])
    assert plaintext not in json.dumps(listed)

    rows = cloud.database.execute("SELECT body FROM resources WHERE kind='secret'")
    assert len(rows) == 1
    assert plaintext not in str(rows[0][0])
    assert "password" in str(rows[0][0]), "the key names are kept, only the values are sealed"

    status, updated = await api.call(
        "PUT", "/secrets/cred", sample("secrets", "cred", data={"token": "second-plaintext"})
    )
    assert status == 200, updated
    assert updated["data"] == {"token": "second-plaintext"}
    rows = cloud.database.execute("SELECT body FROM resources WHERE kind='secret'")
    assert "second-plaintext" not in str(rows[0][0])


async def test_registry_password_is_never_returned(api: Api, cloud: RunningCloud) -> None:
    """A registry's password is stored sealed and no response carries it."""
    password = "registry-plaintext-pw"
    responses = []
    status, created = await api.call("POST", "/registries", sample("registries", "reg"))
    assert status == 201, created
    responses.append(created)
    assert created["address"] == "registry.example.com:5000/team"
    assert created["username"] == "robot"
    responses.append((await api.call("GET", "/registries/reg"))[1])
    responses.append((await api.call("GET", "/registries"))[1])
    responses.append((await api.call("PUT", "/registries/reg", sample("registries", "reg")))[1])
    for body in responses:
        assert "password" not in json.dumps(body), body
    rows = cloud.database.execute("SELECT body FROM resources WHERE kind='registry'")
    assert password not in str(rows[0][0])


async def test_registry_password_survives_a_put_without_one(api: Api, cloud: RunningCloud) -> None:
    """The password cannot be read back, so a PUT that leaves it out keeps the stored one; a PUT
    that sends one replaces it."""
    await api.call("POST", "/registries", sample("registries", "reg"))
    (before,) = cloud.database.execute("SELECT body FROM resources WHERE kind='registry'")
    sealed = json.loads(before[0])["password"]
    without = sample("registries", "reg", description="no password sent")
    del without["password"]
    status, body = await api.call("PUT", "/registries/reg", without)
    assert status == 200, body
    (after,) = cloud.database.execute("SELECT body FROM resources WHERE kind='registry'")
    assert json.loads(after[0])["password"] == sealed
    status, body = await api.call(
        "PUT", "/registries/reg", sample("registries", "reg", password="new-pw")
    )
    assert status == 200, body
    (replaced,) = cloud.database.execute("SELECT body FROM resources WHERE kind='registry'")
    assert json.loads(replaced[0])["password"] not in (sealed, "new-pw")


async def test_registry_without_credentials(api: Api) -> None:
    """A public registry needs only an address; its username reads as empty."""
    status, created = await api.call("POST", "/registries", {"name": "hub", "address": "docker.io"})
    assert status == 201, created
    assert_schema("Registry", created)
    assert created["username"] == ""


# --- certificates -------------------------------------------------------------------------------


async def test_certificate_is_described_and_its_key_never_shown(
    api: Api, cloud: RunningCloud
) -> None:
    """A certificate with its key is stored with fingerprint, validity and DNS names; no
    response and no stored row carries the private key in clear."""
    _key, certificate = key_and_certificate()
    status, created = await api.call("POST", "/certificates", sample("certificates", "tls"))
    assert status == 201, created
    assert_schema("Certificate", created)
    parsed = x509.load_pem_x509_certificate(certificate.encode())
    der = parsed.public_bytes(serialization.Encoding.DER)
    assert created["fingerprint"] == hashlib.sha256(der).hexdigest()
    assert created["dnsNames"] == ["plc.example.com"]
    assert created["subject"] == "CN=plc.example.com"
    not_after = datetime.fromisoformat(created["notAfter"].replace("Z", "+00:00"))
    assert not_after == parsed.not_valid_after_utc
    assert created["data"] == {"certificate": certificate}
    bodies = [
        created,
        (await api.call("GET", "/certificates/tls"))[1],
        (await api.call("GET", "/certificates"))[1],
        (await api.call("PUT", "/certificates/tls", sample("certificates", "tls")))[1],
    ]
    for body in bodies:
        text = json.dumps(body)
        assert "PRIVATE KEY" not in text
        assert '"key"' not in text
    rows = cloud.database.execute("SELECT body FROM resources WHERE kind='certificate'")
    assert "PRIVATE KEY" not in str(rows[0][0])


async def test_certificate_without_dns_names(api: Api) -> None:
    """A certificate with no subject alternative names reads with an empty dnsNames."""
    key, certificate = key_and_certificate("plain ca", ())
    status, created = await api.call(
        "POST", "/certificates", {"name": "ca", "data": {"certificate": certificate, "key": key}}
    )
    assert status == 201, created
    assert_schema("Certificate", created)
    assert created["dnsNames"] == []


async def test_certificate_with_someone_elses_key_is_400(api: Api) -> None:
    """A key that does not belong to the certificate is refused on data.key."""
    _, certificate = key_and_certificate()
    other_key, _ = key_and_certificate("other.example.com", ("other.example.com",))
    status, body = await api.call(
        "POST",
        "/certificates",
        {"name": "c", "data": {"certificate": certificate, "key": other_key}},
    )
    _assert_failed(status, body, "data.key", "BadRequest")
    assert "PRIVATE KEY" not in body["message"]


async def test_certificate_garbage_pem_is_400(api: Api) -> None:
    """PEM armour around garbage is refused on the field it is in."""
    key, certificate = key_and_certificate()
    garbage_cert = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    garbage_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    status, body = await api.call(
        "POST", "/certificates", {"name": "c", "data": {"certificate": garbage_cert, "key": key}}
    )
    _assert_failed(status, body, "data.certificate", "BadRequest")
    status, body = await api.call(
        "POST",
        "/certificates",
        {"name": "c", "data": {"certificate": certificate, "key": garbage_key}},
    )
    _assert_failed(status, body, "data.key", "BadRequest")
    status, body = await api.call(
        "POST", "/certificates", {"name": "c", "data": {"certificate": "hello", "key": key}}
    )
    _assert_failed(status, body, "data.certificate")
    status, listed = await api.call("GET", "/certificates")
    assert listed["total"] == 0


# --- node routes --------------------------------------------------------------------------------


async def test_node_apps_lists_the_matching_apps(api: Api) -> None:
    """/nodes/<n>/apps lists the apps whose selector matches the node, with no status yet."""
    await api.call("POST", "/nodes", sample("nodes", "gw", labels={"site": "paris"}))
    await api.call("POST", "/apps", sample("apps", "web", selector="site=paris"))
    await api.call("POST", "/apps", sample("apps", "by-name", selector="baetyl-node-name=gw"))
    await api.call("POST", "/apps", sample("apps", "elsewhere", selector="site=lyon"))
    await api.call("POST", "/apps", sample("apps", "nowhere", selector=""))
    status, body = await api.call("GET", "/nodes/gw/apps")
    assert status == 200, body
    assert body["total"] == 2
    assert [a["name"] for a in body["items"]] == ["by-name", "web"]
    for item in body["items"]:
        assert item["status"] is None
        assert_schema("App", item)
    status, node = await api.call("GET", "/nodes/gw")
    assert_schema("Node", node)
    assert node["apps"] == [{"name": "by-name", "version": "1"}, {"name": "web", "version": "1"}]
    status, body = await api.call("GET", "/nodes/missing/apps")
    assert status == 404, body


async def test_desired_apps_follow_app_and_node_changes(api: Api) -> None:
    """Deleting an app, or relabelling a node, changes the apps the node is desired to run."""
    await api.call("POST", "/nodes", sample("nodes", "gw", labels={"site": "paris"}))
    await api.call("POST", "/apps", sample("apps", "web", selector="site=paris"))
    await api.call("POST", "/apps", sample("apps", "lyon-only", selector="site=lyon"))
    _, node = await api.call("GET", "/nodes/gw")
    assert node["desire"]["apps"] == [{"name": "web", "version": "1"}]
    status, node = await api.call(
        "PUT", "/nodes/gw", sample("nodes", "gw", labels={"site": "lyon"})
    )
    assert status == 200, node
    assert node["desire"]["apps"] == [{"name": "lyon-only", "version": "1"}]
    assert node["apps"] == node["desire"]["apps"]
    await api.call("DELETE", "/apps/lyon-only")
    _, node = await api.call("GET", "/nodes/gw")
    assert node["desire"]["apps"] == []
    _, listed = await api.call("GET", "/nodes/gw/apps")
    assert listed == {"total": 0, "items": []}


async def test_node_view_before_it_ever_connected(api: Api) -> None:
    """A node that never connected is offline, never seen, reports nothing and is desired its
    properties."""
    status, node = await api.call("POST", "/nodes", sample("nodes", "gw"))
    assert status == 201, node
    assert_schema("Node", node)
    assert node["online"] is False
    assert node["lastSeen"] is None
    assert node["report"] == {}
    assert node["mode"] == "native"
    assert node["properties"] == {"interval": 5}
    assert node["desire"] == {"apps": [], "nodeprops": {"interval": 5}}


async def test_node_stats_before_it_reports(api: Api) -> None:
    """/nodes/<n>/stats of a node that never reported is offline and empty."""
    await api.call("POST", "/nodes", sample("nodes", "gw"))
    status, body = await api.call("GET", "/nodes/gw/stats")
    assert status == 200, body
    assert body == {"online": False, "node": {}, "nodestats": {}, "appstats": [],
                    "routes": {}, "devices": {}}  # fmt: skip
    status, body = await api.call("GET", "/nodes/missing/stats")
    assert status == 404, body


async def test_node_properties_read_and_replace(api: Api) -> None:
    """PUT /nodes/<n>/properties replaces the desired properties, bumps the node's version and
    reaches its desired state; If-Match guards it like any update."""
    await api.call("POST", "/nodes", sample("nodes", "gw"))
    status, body = await api.call("GET", "/nodes/gw/properties")
    assert status == 200, body
    assert body == {"desire": {"interval": 5}, "report": {}, "refused": {}}
    status, body = await api.call("PUT", "/nodes/gw/properties", {"desire": {"mode": "eco"}})
    assert status == 200, body
    assert body == {"desire": {"mode": "eco"}, "report": {}, "refused": {}}
    status, node = await api.call("GET", "/nodes/gw")
    assert node["version"] == "2"
    assert node["properties"] == {"mode": "eco"}
    assert node["desire"]["nodeprops"] == {"mode": "eco"}
    assert node["labels"] == {"site": "paris"}, "labels are kept"

    status, body = await api.call(
        "PUT", "/nodes/gw/properties", {"desire": {}}, headers={"If-Match": '"1"'}
    )
    assert status == 409, body
    status, body = await api.call(
        "PUT", "/nodes/gw/properties", {"desire": {}}, headers={"If-Match": '"2"'}
    )
    assert status == 200, body
    assert body["desire"] == {}
    status, body = await api.call("PUT", "/nodes/missing/properties", {"desire": {}})
    assert status == 404, body


async def test_node_properties_bad_body_is_400(api: Api) -> None:
    """A properties body other than {"desire": {...}} is 400 on field desire."""
    await api.call("POST", "/nodes", sample("nodes", "gw"))
    too_many = {"desire": {f"p{i}": i for i in range(257)}}
    bodies: tuple[Any, ...] = (
        {},
        {"desire": 1},
        {"desire": [1]},
        {"desire": {}, "report": {}},
        [1],
        too_many,
    )
    for request in bodies:
        status, body = await api.call("PUT", "/nodes/gw/properties", request)
        assert status == 400, (request, body)
        assert body["code"] == "BadRequest"
    status, body = await api.call("GET", "/nodes/gw/properties")
    assert body["desire"] == {"interval": 5}


async def test_node_init_returns_an_install_command(api: Api, cloud: RunningCloud) -> None:
    """/nodes/<n>/init gives a command naming the activation port and a fresh token that
    expires within the install-token lifetime."""
    await api.call("POST", "/nodes", sample("nodes", "gw"))
    before = time.time()
    status, body = await api.call("GET", "/nodes/gw/init")
    assert status == 200, body
    assert_schema("InstallCommand", body)
    assert set(body) == {"cmd", "token", "expiresAt"}
    port = cloud.cloud.ports["activation"]
    assert f":{port}" in body["cmd"]
    assert body["token"] in body["cmd"]
    assert re.search(r"--ca-sha256 [0-9a-f]{64}\b", body["cmd"]), body["cmd"]
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00")).timestamp()
    ttl = cloud.context.install_token_ttl
    assert before + ttl - 2 <= expires <= time.time() + ttl + 1
    status, again = await api.call("GET", "/nodes/gw/init")
    assert again["token"] != body["token"], "each call mints its own single-use token"
    status, body = await api.call("GET", "/nodes/missing/init")
    assert status == 404, body


async def test_deleted_node_is_gone_with_its_extras(api: Api) -> None:
    """After a node is deleted its extras are 404 and a new node of that name starts afresh."""
    await api.call("POST", "/nodes", sample("nodes", "gw"))
    await api.call("PUT", "/nodes/gw/properties", {"desire": {"x": 1}})
    status, _ = await api.call("DELETE", "/nodes/gw")
    assert status == 204
    for path in ("/nodes/gw/apps", "/nodes/gw/stats", "/nodes/gw/properties", "/nodes/gw/init"):
        status, body = await api.call("GET", path)
        assert status == 404, (path, body)
    status, node = await api.call("POST", "/nodes", sample("nodes", "gw", properties={}))
    assert status == 201, node
    assert node["version"] == "1"
    assert node["desire"] == {"apps": [], "nodeprops": {}}

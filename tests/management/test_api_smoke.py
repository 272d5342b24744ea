"""The API answers on both stores: a node and a matching app, end to end through HTTP."""

from __future__ import annotations

import io
import json

from tests.support.cloud import Api


async def test_create_node_and_matching_app(api: Api) -> None:
    """An app whose selector matches a node appears in that node's desired state."""
    status, node = await api.call("POST", "/nodes", {"name": "gw-1", "labels": {"site": "x"}})
    assert status == 201, node
    status, app = await api.call(
        "POST",
        "/apps",
        {"name": "web", "selector": "site=x", "services": [{"name": "web", "image": "nginx"}]},
    )
    assert status == 201, app
    status, node = await api.call("GET", "/nodes/gw-1")
    assert status == 200
    assert node["desire"]["apps"] == [{"name": "web", "version": "1"}]
    assert node["apps"] == [{"name": "web", "version": "1"}]


async def test_app_mounts_and_namespace(api: Api) -> None:
    """An app lists the configs and secrets it mounts; /namespace names the token's tenant."""
    assert (await api.call("POST", "/configs", {"name": "conf", "data": {"a": "1"}}))[0] == 201
    assert (await api.call("POST", "/secrets", {"name": "pw", "data": {"p": "s3"}}))[0] == 201
    app = {
        "name": "web",
        "selector": "site=x",
        "services": [{"name": "web", "image": "nginx"}],
        "volumes": [
            {"name": "c", "config": {"name": "conf"}},
            {"name": "s", "secret": {"name": "pw"}},
        ],
    }
    assert (await api.call("POST", "/apps", app))[0] == 201
    status, configs = await api.call("GET", "/apps/web/configs")
    assert status == 200
    assert [c["name"] for c in configs["items"]] == ["conf"]
    status, secrets = await api.call("GET", "/apps/web/secrets")
    assert [s["name"] for s in secrets["items"]] == ["pw"]
    assert "data" not in secrets["items"][0]
    assert (await api.call("GET", "/apps/nope/configs"))[0] == 404
    assert await api.call("GET", "/namespace") == (200, {"name": "default"})


async def test_a_body_over_the_limit_is_413(api: Api) -> None:
    """A request body over 2 MiB is refused with 413 and the error body, nothing stored."""
    big = {"name": "huge", "data": {"blob": "x" * (2 * 1024 * 1024 + 10)}}
    async with api.session.post(
        api.base + "/v1/configs",
        data=io.BytesIO(json.dumps(big).encode()),  # a stream: aiohttp warns on big raw bytes
        headers=api.headers({"Content-Type": "application/json"}),
    ) as response:
        status, body = response.status, await response.json()
    assert status == 413
    assert body["code"] == "PayloadTooLarge"
    assert (await api.call("GET", "/configs/huge"))[0] == 404


async def test_properties_too_large_for_the_desired_state_are_refused_before_storing(
    api: Api,
) -> None:
    """Node properties over the desired state's limits are a 400 and nothing is stored."""
    assert (await api.call("POST", "/nodes", {"name": "n1"}))[0] == 201
    big = {f"p{i}": "x" * 1000 for i in range(100)}
    status, body = await api.call("PUT", "/nodes/n1/properties", {"desire": big})
    assert status == 400
    assert body["field"] == "desire"
    _, node = await api.call("GET", "/nodes/n1")
    assert not node.get("properties")
    status, body = await api.call("POST", "/nodes", {"name": "n2", "properties": big})
    assert (status, body["field"]) == (400, "properties")
    assert (await api.call("GET", "/nodes/n2"))[0] == 404

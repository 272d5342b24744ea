"""The API answers on both stores: a node and a matching app, end to end through HTTP."""

from __future__ import annotations

from tests.management.conftest import Api


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

"""Routes in the management API: CRUD, the checks (422 with the reason), placement on nodes by
selector, the desired document and ``resource/get``; the names reserved for system apps; and
the ROUTE table of ``baetyl node get``, from the node's report.

The whole cloud runs (both store backends); nodes are real MQTT clients of the cloud broker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from management.cli.resources import render_routes
from tests.management.nodes import SERVICES, ConnectNode, app, create, node_at, ref
from tests.support.cloud import Api

UP = {
    "name": "telemetry-up",
    "selector": "site=paris",
    "source": {"local": "devices/+/telemetry"},
    "target": {"cloud": "telemetry/{device}"},
}
FUNCTION_APP = {
    "name": "scale",
    "type": "function",
    "selector": "",
    "services": [
        {"name": "fn", "handlers": [{"name": "convert", "handler": "scale.convert",
                                     "codeConfig": "scale-code"}]}
    ],
    "volumes": [{"name": "code", "config": {"name": "scale-code"}}],
}  # fmt: skip


def route(**changes: Any) -> dict[str, Any]:
    return {**UP, **changes}


async def test_route_crud_with_defaults(api: Api) -> None:
    created = await create(api, "routes", UP)
    assert created["qos"] == 1
    assert created["source"] == {"local": "devices/+/telemetry"}
    status, page = await api.call("GET", "/routes")
    assert status == 200
    assert [item["name"] for item in page["items"]] == ["telemetry-up"]
    status, updated = await api.call("PUT", "/routes/telemetry-up", route(qos=0))
    assert status == 200, updated
    assert updated["qos"] == 0
    assert (await api.call("DELETE", "/routes/telemetry-up"))[0] == 204
    assert (await api.call("GET", "/routes/telemetry-up"))[0] == 404


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"source": {}}, "source", "exactly one of local or cloud"),
        ({"source": {"local": "a", "cloud": "b"}}, "source", "local and cloud"),
        ({"target": {}}, "target", "exactly one of local or cloud"),
        ({"source": {"cloud": "cmd/#"}}, "target", "cloud to the cloud"),
        ({"source": {"local": "a/#/b"}}, "source.local", "not a valid MQTT topic filter"),
        ({"source": {"local": "$SYS/#"}}, "source.local", "starts with '$'"),
        ({"source": {"local": "devices/{device}/x"}}, "source.local", "{device}"),
        ({"target": {"cloud": "t/{sensor}"}}, "target.cloud", "{sensor}"),
        ({"target": {"cloud": "t/+/x"}}, "target.cloud", "wildcard"),
        ({"target": {"local": "t/#"}}, "target.local", "wildcard"),
        ({"target": {"local": "$t/{device}"}}, "target.local", "starts with '$'"),
        ({"target": {"cloud": "t//{device}"}}, "target.cloud", "empty level"),
        ({"target": {"cloud": "t/{device}/"}}, "target.cloud", "empty level"),
        ({"target": {"cloud": "t/{4}"}}, "target.cloud", "only 3 level(s)"),
        ({"qos": 2}, "qos", "0 or 1"),
        ({"function": {"app": "nowhere", "function": "f"}}, "function.app", "no function app"),
    ],
)
async def test_malformed_routes_are_refused_with_the_reason(
    api: Api, changes: dict[str, Any], field: str, words: str
) -> None:
    status, answer = await api.call("POST", "/routes", route(**changes))
    assert status == 422, answer
    assert answer["field"] == field
    assert words in answer["message"]
    assert (await api.call("GET", "/routes/telemetry-up"))[0] == 404  # nothing stored


async def test_a_route_names_a_function_of_an_existing_function_app(api: Api) -> None:
    """The app must be a function app with that function; while a route uses it, it stays."""
    await create(
        api, "configs", {"name": "scale-code", "data": {"scale.py": "def convert(e, c): return e"}}
    )
    await create(api, "apps", {**app("web", ""), "name": "web"})
    status, answer = await api.call(
        "POST", "/routes", route(function={"app": "web", "function": "convert"})
    )
    assert status == 422, answer
    assert "no function app named 'web'" in answer["message"]
    await create(api, "apps", FUNCTION_APP)
    status, answer = await api.call(
        "POST", "/routes", route(function={"app": "scale", "function": "other"})
    )
    assert status == 422, answer
    assert answer["field"] == "function.function"
    assert "use one of convert" in answer["message"]
    await create(api, "routes", route(function={"app": "scale", "function": "convert"}))
    status, answer = await api.call("DELETE", "/apps/scale")
    assert status == 409, answer
    assert "telemetry-up" in answer["message"]


@pytest.mark.parametrize("name", ["baetyl-broker", "baetyl-anything"])
async def test_apps_named_like_system_apps_are_refused(api: Api, name: str) -> None:
    status, answer = await api.call(
        "POST", "/apps", {"name": name, "selector": "", "services": SERVICES}
    )
    assert status == 422, answer
    assert answer["field"] == "name"
    assert "reserved for the system apps" in answer["message"]


async def test_routes_are_placed_by_selector_and_answered_to_their_nodes_only(
    api: Api, connect_node: ConnectNode
) -> None:
    """A route reaches the desired state of the nodes its selector matches; resource/get
    answers it to them, with its function, and refuses it to other nodes."""
    paris = await node_at(api, connect_node, "gw-1", site="paris")
    lyon = await node_at(api, connect_node, "gw-2", site="lyon")
    await create(api, "configs", {"name": "scale-code", "data": {"scale.py": "x = 1"}})
    await create(api, "apps", FUNCTION_APP)
    created = await create(api, "routes", route(function={"app": "scale", "function": "convert"},
                                                qos=0))  # fmt: skip
    desired = await paris.desire()
    assert desired["routes"] == [ref("telemetry-up", created["version"])]
    assert "devices" not in desired
    await lyon.nothing()

    spec = await paris.spec("route", "telemetry-up", created["version"])
    assert spec == {
        "name": "telemetry-up",
        "source": {"local": "devices/+/telemetry"},
        "function": {"app": "scale", "function": "convert"},
        "target": {"cloud": "telemetry/{device}"},
        "qos": 0,
    }
    await lyon.refused("route", "telemetry-up", created["version"])
    await paris.refused("route", "telemetry-up", "999")

    # The selector now names Lyon: the route moves.
    moved = await create(api, "routes", {**UP, "name": "down", "selector": "site=lyon",
                                         "source": {"cloud": "cmd/#"},
                                         "target": {"local": "commands/{topic}"}})  # fmt: skip
    assert (await lyon.desire())["routes"] == [ref("down", moved["version"])]
    assert (await lyon.spec("route", "down", moved["version"]))["function"] is None
    assert (await api.call("DELETE", "/routes/telemetry-up"))[0] == 204
    assert "routes" not in await paris.desire()


async def test_node_get_shows_what_its_routes_moved_as_the_node_reported_it(
    api: Api, connect_node: ConnectNode
) -> None:
    """``baetyl node get``'s ROUTE table: a node's ``routes`` report, one row per route; a
    counter that is not one (<none>) or was never reported (0) and an error spread over lines
    cannot break the table."""
    gw1 = await node_at(api, connect_node, "gw-1", site="paris")
    _status, node = await api.call("GET", "/nodes/gw-1")
    assert render_routes(node) == ""  # reported none: no table
    report = {"reported": {"routes": {
        "telemetry-up": {"forwarded": 12, "queued": 3, "dropped": 0, "filtered": 1, "failed": 2,
                         "lastError": "function scale/convert:\nanswered 500"},
        "down": {"forwarded": True, "queued": "x", "lastError": None},
    }}}  # fmt: skip
    await asyncio.to_thread(gw1.client.subscribe, gw1.topic("report/accepted"), 1)
    await asyncio.to_thread(gw1.client.publish, gw1.topic("report"), json.dumps(report).encode(), 1)
    await asyncio.to_thread(gw1.client.receive_on, gw1.topic("report/accepted"))
    _status, node = await api.call("GET", "/nodes/gw-1")
    assert render_routes(node).splitlines() == [
        "ROUTE          FORWARDED   QUEUED   DROPPED   FILTERED   FAILED   LAST-ERROR",
        "down           <none>      <none>   0         0          0        <none>",
        "telemetry-up   12          3        0         1          2        "
        "function scale/convert: answered 500",
    ]

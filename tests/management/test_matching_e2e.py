"""Matching end to end: API writes reach the right nodes' ``desire`` over real MQTT, and nodes
fetch exactly the specs their desired state leads to with ``resource/get``.

Each node is a paho client with a certificate from the running cloud's CA, subscribed at QoS 1 to
its own ``desire``, ``resource`` and ``resource/rejected``, as PROTOCOL.md tells a node to.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from management.store import Kind
from tests.management.nodes import (
    QUIET,
    SERVICES,
    ConnectNode,
    app,
    create,
    node_at,
    ref,
    update,
)
from tests.support.cloud import Api, RunningCloud

PUSH_WITHIN = 1.0  # seconds from an API write to the node's desire


# -- desire pushes ---------------------------------------------------------------------------------


async def test_a_matching_app_reaches_the_node_within_a_second(
    api: Api, connect_node: ConnectNode
) -> None:
    """Creating an app whose selector matches pushes the node ``{"apps", "nodeprops"}`` at once."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    started = time.monotonic()
    await create(api, "apps", app("web", "site=x"))
    assert await node.desire() == {"apps": [ref("web", 1)], "nodeprops": {}}
    assert time.monotonic() - started < PUSH_WITHIN


async def test_an_app_that_does_not_match_does_not_reach_the_node(
    api: Api, connect_node: ConnectNode
) -> None:
    """An app whose selector misses the node (or is empty) pushes nothing to it."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "apps", app("web", "site=y"))
    await create(api, "apps", app("idle", ""))
    await create(api, "apps", app("not-x", "site!=x"))
    await node.nothing()
    await create(api, "apps", app("by-name", "baetyl-node-name=gw-1"))
    assert await node.apps() == [ref("by-name", 1)]


async def test_relabelling_a_node_out_of_a_selector_removes_the_app(
    api: Api, connect_node: ConnectNode
) -> None:
    """A node whose new labels no longer match gets a desire without the app."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "apps", app("web", "site=x"))
    await create(api, "apps", app("all", "site"))
    assert await node.apps() == [ref("web", 1)]
    assert await node.apps() == [ref("all", 1), ref("web", 1)]
    await update(api, "nodes", {"name": "gw-1", "labels": {"site": "y"}})
    assert await node.apps() == [ref("all", 1)]
    await update(api, "nodes", {"name": "gw-1", "labels": {"site": "x"}})
    assert await node.apps() == [ref("all", 1), ref("web", 1)]


async def test_changing_an_apps_selector_moves_it_between_nodes(
    api: Api, connect_node: ConnectNode
) -> None:
    """A new selector removes the app from nodes it left and adds it to nodes it reached."""
    left = await node_at(api, connect_node, "gw-1", site="x")
    right = await node_at(api, connect_node, "gw-2", site="y")
    await create(api, "apps", app("web", "site=x"))
    assert await left.apps() == [ref("web", 1)]
    await right.nothing()
    await update(api, "apps", app("web", "site=y"))
    assert await left.apps() == []
    assert await right.apps() == [ref("web", 2)]
    await update(api, "apps", app("web", "site in (x, y)"))
    assert await left.apps() == [ref("web", 3)]
    assert await right.apps() == [ref("web", 3)]
    await update(api, "apps", app("web", "site=z"))
    assert await left.apps() == []
    assert await right.apps() == []


async def test_deleting_an_app_removes_it_from_its_nodes(
    api: Api, connect_node: ConnectNode
) -> None:
    """A deleted app leaves the desired state of every node it ran on, and only theirs."""
    first = await node_at(api, connect_node, "gw-1", site="x")
    second = await node_at(api, connect_node, "gw-2", site="x")
    bystander = await node_at(api, connect_node, "gw-3", site="y")
    await create(api, "apps", app("web", "site=x"))
    await create(api, "apps", app("db", "site=x"))
    for node in (first, second):
        assert await node.apps() == [ref("web", 1)]
        assert await node.apps() == [ref("db", 1), ref("web", 1)]
    status, _ = await api.call("DELETE", "/apps/web")
    assert status == 204
    assert await first.apps() == [ref("db", 1)]
    assert await second.apps() == [ref("db", 1)]
    await bystander.nothing()


async def test_node_properties_are_pushed(api: Api, connect_node: ConnectNode) -> None:
    """PUT of a node's properties pushes them as ``nodeprops``, keeping its apps."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    other = await node_at(api, connect_node, "gw-2", site="x")
    await create(api, "apps", app("web", "site=x"))
    assert await node.apps() == [ref("web", 1)]
    assert await other.apps() == [ref("web", 1)]
    desire = {"sampleIntervalSeconds": 5, "zone": {"name": "eu", "rack": 3}}
    status, answer = await api.call("PUT", "/nodes/gw-1/properties", {"desire": desire})
    assert status == 200, answer
    assert await node.desire() == {"apps": [ref("web", 1)], "nodeprops": desire}
    status, answer = await api.call("PUT", "/nodes/gw-1/properties", {"desire": {"zone": "us"}})
    assert status == 200, answer
    assert await node.desire() == {"apps": [ref("web", 1)], "nodeprops": {"zone": "us"}}
    await other.nothing()


async def test_updating_a_mounted_config_bumps_the_app_on_its_nodes_only(
    api: Api, connect_node: ConnectNode
) -> None:
    """A config update gives each app mounting it a new version, pushed only where it runs."""
    user = await node_at(api, connect_node, "gw-1", site="x")
    other_app = await node_at(api, connect_node, "gw-2", site="y")
    bystander = await node_at(api, connect_node, "gw-3", site="z")
    await create(api, "configs", {"name": "web-conf", "data": {"a.yaml": "a: 1"}})
    await create(api, "configs", {"name": "unused", "data": {"b": "2"}})
    volume = {"name": "conf", "config": {"name": "web-conf"}}
    await create(api, "apps", app("web", "site=x", volume))
    await create(api, "apps", app("db", "site=y"))
    assert await user.apps() == [ref("web", 1)]
    assert await other_app.apps() == [ref("db", 1)]
    await update(api, "configs", {"name": "web-conf", "data": {"a.yaml": "a: 2"}})
    assert await user.apps() == [ref("web", 2)]
    status, web = await api.call("GET", "/apps/web")
    assert status == 200
    assert web["version"] == "2"
    await update(api, "configs", {"name": "unused", "data": {"b": "3"}})
    await user.nothing()
    await other_app.nothing()
    await bystander.nothing()


async def test_updating_a_mounted_secret_bumps_the_app(api: Api, connect_node: ConnectNode) -> None:
    """A secret update, like a config's, gives the apps mounting it a new version."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "secrets", {"name": "creds", "data": {"password": "one"}})
    await create(api, "apps", app("web", "site=x", {"name": "s", "secret": {"name": "creds"}}))
    assert await node.apps() == [ref("web", 1)]
    await update(api, "secrets", {"name": "creds", "data": {"password": "two"}})
    assert await node.apps() == [ref("web", 2)]


async def test_other_namespaces_are_never_pushed(
    api: Api, api_for: Callable[[str], Awaitable[Api]], connect_node: ConnectNode
) -> None:
    """An app reaches only nodes of its own namespace, whatever their labels."""
    mine = await node_at(api, connect_node, "gw-1", site="x")
    theirs_api = await api_for("acme")
    theirs = await node_at(theirs_api, connect_node, "gw-1", site="x")
    await create(api, "apps", app("web", "site=x"))
    assert await mine.apps() == [ref("web", 1)]
    await theirs.nothing()


# -- resource/get ----------------------------------------------------------------------------------


async def test_a_node_fetches_its_app_and_what_it_mounts(
    cloud: RunningCloud, api: Api, connect_node: ConnectNode
) -> None:
    """The app spec names the versions of its volumes; the config and the secret (in clear)
    come at those versions."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "configs", {"name": "web-conf", "data": {"a.yaml": "a: 1"}})
    await update(api, "configs", {"name": "web-conf", "data": {"a.yaml": "a: 2"}})
    await create(api, "secrets", {"name": "creds", "data": {"password": "s3cr3t"}})
    volumes = [
        {"name": "conf", "config": {"name": "web-conf"}},
        {"name": "pw", "secret": {"name": "creds"}},
        {"name": "logs", "hostPath": {"path": "/var/log/web"}},
    ]
    created = await create(api, "apps", {**app("web", "site=x", *volumes), "description": "x"})
    (wanted,) = await node.apps()
    assert wanted == ref("web", created["version"])
    spec = await node.spec("app", "web", wanted["version"])
    assert spec["selector"] == "site=x"
    assert spec["services"] == SERVICES
    assert "description" not in spec
    assert spec["volumes"] == [
        {"name": "conf", "config": {"name": "web-conf", "version": "2"}},
        {"name": "pw", "secret": {"name": "creds", "version": "1"}},
        {"name": "logs", "hostPath": {"path": "/var/log/web"}},
    ]
    assert await node.spec("config", "web-conf", "2") == {"data": {"a.yaml": "a: 2"}}
    assert await node.spec("secret", "creds", "1") == {"data": {"password": "s3cr3t"}}
    stored = await cloud.context.store.get("default", Kind.SECRET, "creds")
    assert "s3cr3t" not in json.dumps(stored.body)


async def test_a_config_update_is_fetched_at_the_new_versions(
    api: Api, connect_node: ConnectNode
) -> None:
    """After a config update the node fetches the bumped app, whose volume names the new config
    version; the old versions are refused."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "configs", {"name": "web-conf", "data": {"a": "1"}})
    await create(api, "apps", app("web", "site=x", {"name": "c", "config": {"name": "web-conf"}}))
    assert await node.apps() == [ref("web", 1)]
    await update(api, "configs", {"name": "web-conf", "data": {"a": "2"}})
    assert await node.apps() == [ref("web", 2)]
    spec = await node.spec("app", "web", "2")
    assert spec["volumes"] == [{"name": "c", "config": {"name": "web-conf", "version": "2"}}]
    assert await node.spec("config", "web-conf", "2") == {"data": {"a": "2"}}
    await node.refused("app", "web", "1")
    await node.refused("config", "web-conf", "1")


async def test_a_node_cannot_fetch_what_its_apps_do_not_lead_to(
    api: Api, connect_node: ConnectNode
) -> None:
    """Apps not running on the node, unmounted configs and secrets, stale or unknown versions
    and unknown names are all 404."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    await create(api, "configs", {"name": "web-conf", "data": {"a": "1"}})
    await create(api, "configs", {"name": "other-conf", "data": {"b": "1"}})
    await create(api, "secrets", {"name": "other-secret", "data": {"p": "1"}})
    await create(api, "apps", app("web", "site=x", {"name": "c", "config": {"name": "web-conf"}}))
    volumes = (
        {"name": "c", "config": {"name": "other-conf"}},
        {"name": "s", "secret": {"name": "other-secret"}},
    )
    await create(api, "apps", app("elsewhere", "site=y", *volumes))
    assert await node.apps() == [ref("web", 1)]
    await node.refused("app", "elsewhere", "1")
    await node.refused("config", "other-conf", "1")
    await node.refused("secret", "other-secret", "1")
    await node.refused("secret", "web-conf", "1")  # a config is not a secret
    await node.refused("app", "web", "2")
    await node.refused("app", "web", "0")
    await node.refused("config", "web-conf", "2")
    await node.refused("app", "nothing", "1")
    assert await node.spec("app", "web", "1")
    await update(api, "nodes", {"name": "gw-1", "labels": {"site": "y"}})
    assert await node.apps() == [ref("elsewhere", 1)]
    await node.refused("app", "web", "1")
    await node.refused("config", "web-conf", "1")
    assert await node.spec("config", "other-conf", "1") == {"data": {"b": "1"}}


async def test_a_node_never_gets_another_namespaces_resources(
    api_for: Callable[[str], Awaitable[Api]], connect_node: ConnectNode
) -> None:
    """A node of namespace a asking for names that exist in namespace b (even matching its
    labels there) gets 404, and cannot ask on b's topics."""
    a, b = await api_for("a"), await api_for("b")
    node = await node_at(a, connect_node, "gw-1", site="x")
    await create(b, "nodes", {"name": "gw-1", "labels": {"site": "x"}})
    await create(b, "configs", {"name": "conf", "data": {"k": "b-only"}})
    await create(b, "secrets", {"name": "pw", "data": {"k": "b-only"}})
    volumes = ({"name": "c", "config": {"name": "conf"}}, {"name": "s", "secret": {"name": "pw"}})
    await create(b, "apps", app("web", "site=x", *volumes))
    await node.nothing()
    await node.refused("app", "web", "1")
    await node.refused("config", "conf", "1")
    await node.refused("secret", "pw", "1")
    rejected = node.topic("report/rejected")
    assert await asyncio.to_thread(node.client.subscribe, rejected, 1) == [1]
    request = json.dumps({"clientToken": "t", "kind": "app", "name": "web", "version": "1"})
    await asyncio.to_thread(
        node.client.publish, "$baetyl/node/b.gw-1/resource/get", request.encode(), 1
    )
    message = await asyncio.to_thread(node.client.receive)
    assert message.topic == rejected
    assert json.loads(message.payload)["code"] == 403
    await node.nothing()


# -- concurrent writes -----------------------------------------------------------------------------


async def test_concurrent_writes_leave_the_latest_desire(
    api: Api, connect_node: ConnectNode
) -> None:
    """Many app writes at once end with a desire holding every app, never an older snapshot."""
    node = await node_at(api, connect_node, "gw-1", site="x")
    names = [f"app-{i:02d}" for i in range(12)]
    await asyncio.gather(*(create(api, "apps", app(name, "site=x")) for name in names))
    pushes = await asyncio.to_thread(node.client.drain, QUIET)
    last = json.loads(pushes[-1].payload)["desired"]
    assert last["apps"] == [ref(name, 1) for name in names]
    status, answer = await api.call("GET", "/nodes/gw-1")
    assert status == 200
    assert answer["desire"]["apps"] == [ref(name, 1) for name in names]


async def test_a_config_update_never_undoes_a_concurrent_app_update(api: Api) -> None:
    """Bumping the apps that mount a config never writes back an app body read before a
    concurrent PUT of that app (the PUT may be told to retry, but is never lost)."""
    await create(api, "nodes", {"name": "gw-1", "labels": {"site": "r9"}})
    await create(api, "configs", {"name": "conf", "data": {"a": "0"}})
    volume = {"name": "c", "config": {"name": "conf"}}
    await create(api, "apps", app("web", "site=x", volume))

    async def put_app(selector: str) -> None:
        for _ in range(5):
            status, answer = await api.call("PUT", "/apps/web", app("web", selector, volume))
            if status != 409:  # "changed while it was written; retry"
                break
        assert status == 200, answer

    for round_ in range(10):
        selector = f"site=r{round_}"
        await asyncio.gather(
            update(api, "configs", {"name": "conf", "data": {"a": str(round_)}}),
            put_app(selector),
        )
        status, body = await api.call("GET", "/apps/web")
        assert status == 200
        assert body["selector"] == selector, f"round {round_}: the app's update was undone"
    status, node = await api.call("GET", "/nodes/gw-1")
    assert status == 200
    assert node["desire"]["apps"] == [ref("web", body["version"])]

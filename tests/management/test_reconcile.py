"""``Matcher.reconcile``: nodes whose desired state fell behind the stored resources (a cloud
killed between a resource write and its push) are brought in line, and only those.

The killed-cloud case itself runs in tests/faults/test_sigkill_mid_write.py; here the store is
written behind the matcher's back, which leaves the same state.
"""

from __future__ import annotations

import pytest

from management.cloud import Cloud
from management.matching import mounts, node_id
from management.store import Kind, Resource
from tests.management.conftest import RunningCloud


async def test_reconcile_pushes_only_the_nodes_behind_their_resources(
    cloud: RunningCloud,
) -> None:
    await cloud.cloud.reconciled()  # the start-up run, on an empty store
    ctx = cloud.context
    store, shadow, matcher = ctx.store, ctx.shadow, ctx.matcher
    await store.ensure_namespace("acme")
    east = await store.create(Resource("acme", Kind.NODE, "east", labels={"zone": "east"}))
    west = await store.create(Resource("acme", Kind.NODE, "west", labels={"zone": "west"}))
    await matcher.after_node_change(east)
    await matcher.after_node_change(west)
    west_before = await shadow.get(node_id("acme", "west"))

    # An app for the east stored, its push lost.
    app = await store.create(Resource("acme", Kind.APP, "web", body={"selector": "zone=east"}))

    assert await matcher.reconcile() == 1
    east_now = await shadow.get(node_id("acme", "east"))
    assert east_now.desired.state == {
        "apps": [{"name": "web", "version": str(app.version)}],
        "nodeprops": {},
    }
    assert await shadow.get(node_id("acme", "west")) == west_before  # untouched

    assert await matcher.reconcile() == 0  # in line now: nothing written again
    assert (await shadow.get(node_id("acme", "east"))).desired.version == east_now.desired.version


async def test_reconcile_gives_a_node_never_pushed_its_first_desired_state(
    cloud: RunningCloud,
) -> None:
    await cloud.cloud.reconciled()
    ctx = cloud.context
    await ctx.store.ensure_namespace("acme")
    await ctx.store.create(Resource("acme", Kind.NODE, "new", body={"properties": {"site": "lab"}}))
    assert (await ctx.shadow.get(node_id("acme", "new"))).desired.version == 0

    assert await ctx.matcher.reconcile() == 1
    desired = (await ctx.shadow.get(node_id("acme", "new"))).desired
    assert desired.version > 0
    assert desired.state == {"apps": [], "nodeprops": {"site": "lab"}}


async def test_the_cloud_reconciles_in_the_background_once_it_serves(cloud: RunningCloud) -> None:
    """A node stored while no cloud ran (as after a crash before its push) has its desired state
    once the next cloud has started, without any API write."""
    await cloud.cloud.reconciled()
    ctx = cloud.context
    await ctx.store.ensure_namespace("acme")
    await ctx.store.create(Resource("acme", Kind.NODE, "late", body={"properties": {"n": 1}}))
    async with Cloud(cloud.settings, cloud.ca, cloud.cloud.files) as second:
        await second.reconciled()
        assert second.context is not None
        desired = (await second.context.shadow.get(node_id("acme", "late"))).desired
    assert desired.state == {"apps": [], "nodeprops": {"n": 1}}


class _CrashHere(Exception):
    """Stands for the process dying at this point of a transaction."""


async def test_a_config_update_and_its_apps_new_versions_are_one_transaction(
    cloud: RunningCloud,
) -> None:
    """A config update that fails after bumping the first of two apps mounting it leaves the
    config and both apps as they were: no app is left at its old version behind a new config
    (a node fetches an app's spec, with what it mounts, only for a new app version)."""
    store = cloud.context.store
    await store.ensure_namespace("acme")
    mounting = {"selector": "zone", "volumes": [{"name": "c", "config": {"name": "conf"}}]}
    config = await store.create(Resource("acme", Kind.CONFIG, "conf", body={"data": {"v": "1"}}))
    first = await store.create(Resource("acme", Kind.APP, "a-first", body=mounting))
    second = await store.create(Resource("acme", Kind.APP, "b-second", body=mounting))
    other = await store.create(Resource("acme", Kind.APP, "c-other", body={"selector": "zone"}))
    seen: list[str] = []

    def users_crashing_at_the_second(app: Resource) -> bool:
        seen.append(app.name)
        if app.name == "b-second":
            raise _CrashHere
        return app.name == "a-first"

    changed = Resource("acme", Kind.CONFIG, "conf", body={"data": {"v": "2"}})
    with pytest.raises(_CrashHere):
        await store.update_used(changed, users=users_crashing_at_the_second)
    assert seen == ["a-first", "b-second"]  # the first app's new version was written, then lost
    assert await store.get("acme", Kind.CONFIG, "conf") == config
    assert await store.get("acme", Kind.APP, "a-first") == first
    assert await store.get("acme", Kind.APP, "b-second") == second

    updated, bumped = await store.update_used(
        changed, users=lambda app: (Kind.CONFIG, "conf") in mounts(app)
    )
    assert updated.version == config.version + 1
    assert updated.body == {"data": {"v": "2"}}
    assert [(app.name, app.version) for app in bumped] == [
        ("a-first", first.version + 1),
        ("b-second", second.version + 1),
    ]
    assert (await store.get("acme", Kind.APP, "a-first")).version == first.version + 1
    assert (await store.get("acme", Kind.APP, "b-second")).version == second.version + 1
    assert await store.get("acme", Kind.APP, "c-other") == other  # mounts nothing: untouched

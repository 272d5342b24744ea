"""``Matcher.reconcile``: nodes whose desired state fell behind the stored resources (a cloud
killed between a resource write and its push) are brought in line, and only those.

The killed-cloud case itself runs in tests/faults/test_sigkill_mid_write.py; here the store is
written behind the matcher's back, which leaves the same state.
"""

from __future__ import annotations

from management.cloud import Cloud
from management.matching import node_id
from management.store import Kind, Resource
from tests.support.cloud import RunningCloud


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


async def test_reconcile_empties_the_desired_state_of_a_deleted_node(
    cloud: RunningCloud,
) -> None:
    """A node's row deleted, its shadow left naming apps (a delete cut short): emptied once,
    and a node that exists is not taken for one."""
    await cloud.cloud.reconciled()
    ctx = cloud.context
    await ctx.store.ensure_namespace("acme")
    labels = {"site": "x"}
    kept = await ctx.store.create(Resource("acme", Kind.NODE, "kept", labels=labels))
    await ctx.store.create(Resource("acme", Kind.APP, "web", body={"selector": "site=x"}))
    gone = await ctx.store.create(Resource("acme", Kind.NODE, "gone", labels=labels))
    await ctx.matcher.after_node_change(kept)
    await ctx.matcher.after_node_change(gone)
    await ctx.store.delete("acme", Kind.NODE, "gone")  # behind the matcher's back
    before = await ctx.shadow.get(node_id("acme", "gone"))
    assert before.desired.state["apps"]
    kept_before = await ctx.shadow.get(node_id("acme", "kept"))

    assert await ctx.matcher.reconcile() == 1
    after = await ctx.shadow.get(node_id("acme", "gone"))
    assert (after.desired.state, after.desired.version) == ({}, before.desired.version + 1)
    assert await ctx.shadow.get(node_id("acme", "kept")) == kept_before
    assert await ctx.matcher.reconcile() == 0  # empty already: not written again


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

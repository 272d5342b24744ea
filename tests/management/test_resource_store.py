"""``ResourceStore`` on SQLite and MariaDB: what its writes keep together.

The API's routes and the matcher go through it; these tests call it directly, on the ``cloud``
fixture's store (both databases).
"""

from __future__ import annotations

import pytest

from management.matching import mounts
from management.store import Kind, Resource
from tests.support.cloud import RunningCloud


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

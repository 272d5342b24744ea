"""A desired write cut by a SIGKILL after its resources are stored must still reach the nodes.

An API write stores the resource (here: a config, which bumps the app mounting it), then pushes
the affected nodes' desired state. A row lock held on one node's shadow from the side makes the
push wait, so the SIGKILL lands between the two, every time. After the restart the stored
resources say "app-all at the new version" while the nodes' desired state still names the old
one: the cloud must reconcile desired state with its resources when it starts
(``Matcher.reconcile``). Before it did, the change never reached the nodes until some later
write touched them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest

import certs
from tests.faults.cloud import read_shadows
from tests.faults.world import Profile, World
from tests.support.db import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, Database
from tests.support.polling import until


class StaleDesired(AssertionError):
    """Nodes' desired state still names what the stored resources no longer say."""


class RowLock:
    """A transaction on the side holding one row ``FOR UPDATE`` until released: a node's
    shadow (``RowLock(db, node_id)``) or a resource (``RowLock(db, name, kind="app")``)."""

    def __init__(self, database: Database, key: str, *, kind: str | None = None) -> None:
        self.conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER,
                                    password="", database=database.name)  # fmt: skip
        self.conn.begin()
        with self.conn.cursor() as cursor:
            if kind is None:
                cursor.execute("SELECT node_id FROM shadows WHERE node_id = %s FOR UPDATE", (key,))
            else:
                cursor.execute(
                    "SELECT name FROM resources WHERE namespace = 'default' AND kind = %s "
                    "AND name = %s FOR UPDATE",
                    (kind, key),
                )

    def release(self) -> None:
        with contextlib.suppress(pymysql.Error):
            self.conn.rollback()
        self.conn.close()


def app_version(database: Database, name: str, kind: str = "app") -> int:
    rows = database.execute(
        "SELECT version FROM resources WHERE namespace = 'default' AND kind = ? AND name = ?",
        (kind, name),
    )
    return int(rows[0][0])


async def kill_while_blocked(
    world: World,
    database: Database,
    row: tuple[str | None, str],
    method: str,
    path: str,
    body: Any = None,
    *,
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Hold ``row`` from the side — a resource (kind, name), or a node's shadow (None, node id)
    — send the request, wait until ``ready`` (if given) and until it blocks on that table (it
    must not finish first), SIGKILL the cloud, let the row go."""
    kind, name = row
    lock = await asyncio.to_thread(RowLock, database, name, kind=kind)
    table = "%resources%" if kind is not None else "%shadows%"
    what = f"the {kind} {name}" if kind is not None else f"the shadow of {name}"
    try:
        write = asyncio.create_task(world.rest.call(method, path, body))

        async def waiting() -> bool:  # (or done early: said below)
            if write.done():
                return True
            if ready is not None and not await ready():
                return False
            return await asyncio.to_thread(lock_waits, database, table) > 0

        await until(waiting, 30, f"{method} {path} to wait on {what}", every=0.02)
        if write.done():
            pytest.fail(f"{method} {path} did not wait on {what}: {write.result()}")
        await world.up.kill()
    finally:
        await asyncio.to_thread(lock.release)
    with contextlib.suppress(aiohttp.ClientError):
        await write


def lock_waits(database: Database, statement: str) -> int:
    """Transactions on this test's database waiting for a row lock now in a statement that
    matches ``statement`` (SQL LIKE; other databases on the server, other statements: not
    counted)."""
    rows = database.execute(
        "SELECT COUNT(*) FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE t.trx_state = 'LOCK WAIT' AND p.db = ? AND t.trx_query LIKE ?",
        (database.name, statement),
    )
    return int(rows[0][0])


@pytest.mark.slow
async def test_a_write_cut_between_store_and_push_still_reaches_the_nodes(
    tmp_path: Path, database: Database, profile: Profile
) -> None:
    """Killed after a config change bumped its app but before the push, the restarted cloud
    still brings every node to the app's new version."""
    profile = dataclasses.replace(profile, nodes=20, agents=0)
    async with World(tmp_path / "run", database, profile) as world:
        before = await asyncio.to_thread(app_version, database, "app-all")
        lock = await asyncio.to_thread(RowLock, database, "default.n0")
        try:
            body = {"name": "conf-all", "data": {"v": "cut"}}
            write = asyncio.create_task(world.rest.call("PUT", "/configs/conf-all", body))

            async def bumped() -> bool:
                return await asyncio.to_thread(app_version, database, "app-all") > before

            await until(bumped, 10, "the config change to bump app-all", every=0.02)
            await asyncio.sleep(0.2)  # the push reaches the locked row and waits there
            if write.done():
                pytest.fail("the push did not wait on the locked row")
            await world.up.kill()
        finally:
            await asyncio.to_thread(lock.release)
        with contextlib.suppress(aiohttp.ClientError):
            await write
        await world.up.start()
        wanted = {"name": "app-all", "version": str(before + 1)}

        async def reached() -> bool:
            views: dict[str, Any] = await world.rest.nodes()
            return all(wanted in view["desire"].get("apps", []) for view in views.values())

        try:
            await until(reached, 10, "every node's desired state to name the app's new version")
        except AssertionError as exc:
            raise StaleDesired(str(exc)) from None
        await world.wait_synced(30, "the nodes to take it")


@pytest.mark.slow
async def test_a_config_write_cut_while_bumping_its_apps_keeps_all_or_nothing(
    tmp_path: Path, database: Database, profile: Profile
) -> None:
    """Killed while a config change waits for app-3, the second of the two apps mounting it
    (app-0, app-3; its row held from the side), the cloud keeps neither the config change nor a
    new version of app-0; made again, the change reaches both apps and their nodes.

    Before the bumps shared the config's transaction, the config and app-0 stayed changed and
    app-3 at its old version for good: its nodes never fetched its spec with the new config."""
    profile = dataclasses.replace(profile, nodes=20, agents=0)
    async with World(tmp_path / "run", database, profile) as world:
        apps = ("app-0", "app-3")
        before = {name: await asyncio.to_thread(app_version, database, name) for name in apps}
        config_before = await asyncio.to_thread(app_version, database, "conf-0", "config")
        body = {"name": "conf-0", "data": {"v": "cut"}}
        await kill_while_blocked(world, database, ("app", "app-3"), "PUT", "/configs/conf-0", body)
        after = {name: await asyncio.to_thread(app_version, database, name) for name in apps}
        config_after = await asyncio.to_thread(app_version, database, "conf-0", "config")
        assert (config_after, after) == (config_before, before), "a config write half done"

        await world.up.start()
        await world.rest.ok("PUT", "/configs/conf-0", {"name": "conf-0", "data": {"v": "again"}})
        for name in apps:
            assert await asyncio.to_thread(app_version, database, name) == before[name] + 1
        wanted = {name: {"name": name, "version": str(before[name] + 1)} for name in apps}
        selected = {
            name: {world.group(k) for k in range(int(name[-1]), int(name[-1]) + 2)} for name in apps
        }

        async def reached() -> bool:
            views: dict[str, Any] = await world.rest.nodes()
            return all(
                wanted[name] in view["desire"].get("apps", [])
                for view in views.values()
                for name in apps
                if view["labels"].get("group") in selected[name]
            )

        await until(reached, 10, "the nodes of app-0 and app-3 to name their new versions")
        await world.wait_synced(30, "the nodes to take it")


def node_exists(database: Database, name: str) -> bool:
    rows = database.execute(
        "SELECT name FROM resources WHERE namespace = 'default' AND kind = 'node' AND name = ?",
        (name,),
    )
    return bool(rows)


@pytest.mark.slow
async def test_a_node_delete_cut_short_never_leaves_a_deleted_node_able_to_connect(
    tmp_path: Path, database: Database, profile: Profile
) -> None:
    """Killed while deleting a node (its row held from the side), the cloud leaves the node in
    place with its certificates revoked, never gone with a certificate still valid; deleting it
    again completes.

    Before the certificates were revoked ahead of the row's delete, the node stayed connectable
    for good: the delete rolled back and nothing revoked its certificate, or the delete committed
    and the revocation never ran."""
    profile = dataclasses.replace(profile, nodes=5, agents=0)
    async with World(tmp_path / "run", database, profile) as world:
        identity = certs.Identity.node("default", "n0")

        def valid_certificates() -> int:
            records = certs.CertificateAuthority.load(world.ca_dir).records()
            return sum(r.identity == identity and r.status is certs.Status.VALID for r in records)

        assert await asyncio.to_thread(valid_certificates) == 1
        await kill_while_blocked(world, database, ("node", "n0"), "DELETE", "/nodes/n0")
        assert await asyncio.to_thread(node_exists, database, "n0")  # the delete rolled back
        assert await asyncio.to_thread(valid_certificates) == 0, "n0 can still connect"

        await world.up.start()
        assert (await world.rest.call("DELETE", "/nodes/n0"))[0] == 204
        assert (await world.rest.call("GET", "/nodes/n0"))[0] == 404
        assert not await asyncio.to_thread(node_exists, database, "n0")


@pytest.mark.slow
async def test_a_node_delete_cut_before_its_shadow_is_emptied_is_finished_at_start(
    tmp_path: Path, database: Database, profile: Profile
) -> None:
    """Killed once a node's row is deleted but while emptying its desired state waits (its
    shadow's row held from the side), the restarted cloud empties it: a deleted node's shadow
    names no app, as after a delete that ran to the end.

    Before the start-up reconciliation looked at shadows without a node, it kept them as they
    were for good."""
    profile = dataclasses.replace(profile, nodes=5, agents=0)
    async with World(tmp_path / "run", database, profile) as world:
        assert (await read_shadows(database))["default.n0"].desired.get("apps")

        async def row_gone() -> bool:  # the delete's own row first: then the push is the one held
            return not await asyncio.to_thread(node_exists, database, "n0")

        await kill_while_blocked(
            world, database, (None, "default.n0"), "DELETE", "/nodes/n0", ready=row_gone
        )
        assert not await asyncio.to_thread(node_exists, database, "n0")
        assert (await read_shadows(database))["default.n0"].desired.get("apps"), "not cut"

        await world.up.start()

        async def emptied() -> bool:
            return not (await read_shadows(database))["default.n0"].desired

        await until(emptied, 20, "the deleted node's desired state to be emptied")
        assert (await world.rest.call("GET", "/nodes/n0"))[0] == 404
        others = {k: v for k, v in (await read_shadows(database)).items() if k != "default.n0"}
        assert others
        assert all(shadow.desired.get("apps") for shadow in others.values())

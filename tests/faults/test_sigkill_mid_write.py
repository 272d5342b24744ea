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
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest

from tests.faults.world import Profile, World, until
from tests.shadow.conftest import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, Database


class StaleDesired(AssertionError):
    """Nodes' desired state still names what the stored resources no longer say."""


class RowLock:
    """A transaction on the side holding one shadow row ``FOR UPDATE`` until released."""

    def __init__(self, database: Database, node_id: str) -> None:
        self.conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER,
                                    password="", database=database.name)  # fmt: skip
        self.conn.begin()
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT node_id FROM shadows WHERE node_id = %s FOR UPDATE", (node_id,))

    def release(self) -> None:
        with contextlib.suppress(pymysql.Error):
            self.conn.rollback()
        self.conn.close()


def app_version(database: Database, name: str) -> int:
    rows = database.execute(
        "SELECT version FROM resources WHERE namespace = 'default' AND kind = 'app' AND name = ?",
        (name,),
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

"""SqlShadowStore and its Database on SQLite and MariaDB: migrations, load, conditional commits,
durability."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shadow.document import EMPTY, Section
from shadow.errors import StaleWrite, StoreError
from shadow.server.database import Database as Db
from shadow.server.migrations import MIGRATIONS, Migration, _check
from shadow.server.shadows import SqlShadowStore
from shadow.server.store import ShadowRecord, ShadowWrite
from tests.support.db import Database

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def opened(
    url: str, migrations: Sequence[Migration] = MIGRATIONS
) -> AsyncIterator[SqlShadowStore]:
    """The shadows table on the database at ``url``, opened (and migrated) for the block."""
    async with Db(url, migrations=migrations) as db:
        yield SqlShadowStore(db)


def record(node_id: str, dv: int = 1, rv: int = 0, **state: object) -> ShadowRecord:
    """A shadow with ``state`` desired at version ``dv`` and an empty reported at ``rv``."""
    return ShadowRecord(
        node_id,
        desired=Section(dict(state), {k: {"ts": 1} for k in state}, dv),
        reported=Section({}, {}, rv),
        online=True,
        last_seen=1_700_000_000_000,
        updated_at=1_700_000_000_001,
    )


def insert(*records: ShadowRecord) -> list[ShadowWrite]:
    """Writes that insert ``records`` as new shadows."""
    return [ShadowWrite(r, based_on=None) for r in records]


async def test_open_creates_schema_and_reopening_is_idempotent(database: Database) -> None:
    """Opening applies migration 1 once; a second open applies nothing and the data is kept."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a")))
    async with opened(database.url) as store:
        assert await store.node_ids() == ["a"]
    assert database.execute("SELECT component, id, name FROM baetyl_migrations") == [
        ("shadow", 1, "create shadows")
    ]


async def test_concurrent_opens_migrate_once(database: Database) -> None:
    """Two stores opening a fresh database at once both work and migration 1 is recorded once."""
    first, second = Db(database.url), Db(database.url)
    await asyncio.gather(first.__aenter__(), second.__aenter__())
    try:
        await SqlShadowStore(first).commit(insert(record("a")))
        assert await SqlShadowStore(second).node_ids() == ["a"]
    finally:
        await first.__aexit__(None, None, None)
        await second.__aexit__(None, None, None)
    assert database.execute("SELECT COUNT(*) FROM baetyl_migrations") == [(1,)]


async def test_database_migrated_by_newer_code_is_refused(database: Database) -> None:
    """A recorded migration this code does not know makes opening fail, asking for an upgrade."""
    async with Db(database.url):
        pass
    database.execute(
        "INSERT INTO baetyl_migrations VALUES (?, ?, ?, ?)", ("shadow", 7, "future", 0)
    )
    with pytest.raises(StoreError, match=r"newer pybaetyl \(shadow migration 7\); upgrade"):
        async with Db(database.url):
            pass


async def test_load_of_missing_nodes_is_empty(database: Database) -> None:
    """Nodes without a stored shadow are absent from what load returns."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a")))
        assert await store.load(["b", "c"]) == {}
        assert set(await store.load(["a", "b"])) == {"a"}
        assert await store.load([]) == {}


async def test_insert_then_load_round_trips(database: Database) -> None:
    """Unicode, nested JSON, big integers, floats and a null last_seen come back as stored."""
    shadow = ShadowRecord(
        "default.Ünïcode-Node",
        desired=Section(
            {"name": "温度 🌡", "nested": {"list": [1, {"deep": [None, True]}], "f": 0.1}},
            {"name": {"ts": 1}},
            2**62,
        ),
        reported=Section({"huge": 2**80, "neg": -(2**63)}, {"huge": {"ts": 2}}, 3),
        online=False,
        last_seen=None,
        updated_at=1_700_000_000_123,
    )
    async with opened(database.url) as store:
        await store.commit(insert(shadow, record("other")))
        assert await store.load([shadow.node_id]) == {shadow.node_id: shadow}
        assert await store.load([shadow.node_id.lower()]) == {}  # node ids are case-sensitive


async def test_conditional_update_applies(database: Database) -> None:
    """An update based on the stored versions replaces the row."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a", 1, 0, temp=20)))
        new = record("a", 2, 5, temp=21)
        await store.commit([ShadowWrite(new, based_on=(1, 0))])
        assert await store.load(["a"]) == {"a": new}


async def test_update_that_changes_nothing_still_matches(database: Database) -> None:
    """Rewriting a row with identical values is not mistaken for a stale write (found rows)."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a")))
        await store.commit([ShadowWrite(record("a"), based_on=(1, 0))])
        assert await store.load(["a"]) == {"a": record("a")}


async def test_two_writes_of_one_node_in_a_batch_apply_in_order(database: Database) -> None:
    """A batch may carry a node twice, the second write based on the first."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a", 1, 0)))
        await store.commit(
            [
                ShadowWrite(record("a", 2, 0, step=1), based_on=(1, 0)),
                ShadowWrite(record("a", 3, 0, step=2), based_on=(2, 0)),
            ]
        )
        assert await store.load(["a"]) == {"a": record("a", 3, 0, step=2)}


async def test_stale_update_writes_nothing_of_the_batch(database: Database) -> None:
    """One stale row fails the batch with StaleWrite naming it; its valid rows are not written."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a"), record("b"), record("c")))
        with pytest.raises(StaleWrite) as caught:
            await store.commit(
                [
                    ShadowWrite(record("a", 2, 0), based_on=(1, 0)),
                    ShadowWrite(record("b", 9, 0), based_on=(8, 0)),
                    *insert(record("new")),
                    ShadowWrite(record("c", 2, 0), based_on=(1, 0)),
                ]
            )
        assert caught.value.node_ids == ["b"]
        assert await store.load(["a", "b", "c", "new"]) == {n: record(n) for n in ("a", "b", "c")}


async def test_duplicate_insert_is_stale(database: Database) -> None:
    """Inserting an existing shadow (or one twice) fails the batch with StaleWrite naming it."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a")))
        with pytest.raises(StaleWrite) as caught:
            await store.commit(insert(record("fresh"), record("a", 5)))
        assert caught.value.node_ids == ["a"]
        with pytest.raises(StaleWrite) as caught:
            await store.commit(insert(record("twice"), record("twice")))
        assert caught.value.node_ids == ["twice"]
        assert await store.node_ids() == ["a"]
        assert (await store.load(["a"]))["a"] == record("a")


async def test_batch_of_5000_writes_is_one_transaction(database: Database) -> None:
    """5,000 inserts commit together; 5,000 updates whose last one is stale leave no row changed."""
    nodes = [f"node-{i:05d}" for i in range(5000)]
    async with opened(database.url) as store:
        await store.commit(insert(*(record(n, 1, 0, i=i) for i, n in enumerate(nodes))))
        assert len(await store.load(nodes)) == 5000
        updates = [ShadowWrite(record(n, 2, 0, i=-1), based_on=(1, 0)) for n in nodes]
        updates[-1] = ShadowWrite(record(nodes[-1], 2, 0), based_on=(1, 99))
        with pytest.raises(StaleWrite) as caught:
            await store.commit(updates)
        assert caught.value.node_ids == [nodes[-1]]
        loaded = await store.load(nodes)
        assert all(r.desired.version == 1 for r in loaded.values())
        await store.commit(updates[:-1])
        assert (await store.load([nodes[0]]))[nodes[0]].desired == Section(
            {"i": -1}, {"i": {"ts": 1}}, 2
        )


async def test_ping_answers(database: Database) -> None:
    """ping returns quietly while the database is up."""
    async with opened(database.url) as store:
        await store.ping()


async def test_closed_store_refuses_use(database: Database) -> None:
    """A store used outside its async with raises StoreError saying so."""
    db = Db(database.url)
    store = SqlShadowStore(db)
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    async with db:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.load(["a"])


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@host/db",
        "sqlite://relative.db",
        "sqlite:///tmp/x.db?journal_mode=OFF",
        "mysql://root@127.0.0.1:notaport/db",
        "mysql://127.0.0.1/db",
        "mysql://root:secret@127.0.0.1:3306/",
        "mysql://root:secret@127.0.0.1:3306/db;drop",
        "not a url",
    ],
)
def test_bad_url_is_refused(url: str) -> None:
    """An unsupported or malformed URL raises StoreError naming the accepted forms, no password."""
    with pytest.raises(StoreError, match=r"use sqlite:///absolute/path") as caught:
        Db(url)
    assert "secret" not in str(caught.value)


async def test_unreachable_mysql_says_what_to_check() -> None:
    """A MySQL server that does not answer makes opening fail with what to check."""
    with pytest.raises(StoreError, match="check that the server runs and is reachable"):
        async with Db("mysql://root:@127.0.0.1:1/nowhere"):
            pass


async def test_sqlite_in_missing_directory_says_what_to_check(tmp_path: Path) -> None:
    """A SQLite file whose directory does not exist makes opening fail with what to check."""
    with pytest.raises(StoreError, match="check that its directory exists"):
        async with Db(f"sqlite://{tmp_path}/missing/baetyl.db"):
            pass


async def test_data_survives_close_and_reopen(database: Database) -> None:
    """What was committed is there after the store was closed and opened again."""
    async with opened(database.url) as store:
        await store.commit(insert(record("a", temp=1), record("b")))
        await store.commit([ShadowWrite(record("a", 2, 1, temp=2), based_on=(1, 0))])
    async with opened(database.url) as store:
        assert await store.load(["a", "b"]) == {
            "a": record("a", 2, 1, temp=2),
            "b": record("b"),
        }
        assert (await store.load(["b"]))["b"].reported == EMPTY


CHILD = """
import asyncio, sys
from shadow.document import Section
from shadow.server.database import Database
from shadow.server.shadows import SqlShadowStore
from shadow.server.store import ShadowRecord, ShadowWrite

async def main() -> None:
    async with Database(sys.argv[1]) as db:
        store = SqlShadowStore(db)
        shadow = ShadowRecord("killed", Section({"k": 1}, {}, 1), updated_at=5)
        await store.commit([ShadowWrite(shadow, based_on=None)])
        print("committed", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_commit_is_durable_across_sigkill(database: Database) -> None:
    """A commit that returned is found after its process was killed with SIGKILL right after."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, database.url, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line == b"committed\n"
    finally:
        child.kill()
        await child.wait()
    assert child.returncode == -9
    async with opened(database.url) as store:
        loaded = await store.load(["killed"])
    assert loaded["killed"].desired == Section({"k": 1}, {}, 1)


EXTRA = Migration(
    1,
    "create notes",
    sqlite=("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",),
    mysql=("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT NOT NULL) ENGINE=InnoDB",),
    component="notes",
)


async def test_another_component_migrates_beside_the_shadow(database: Database) -> None:
    """A second component's migrations run too, and its tables take plain SQL transactions."""
    async with Db(database.url, migrations=(*MIGRATIONS, EXTRA)) as store:
        async with store.transaction() as tx:
            inserted = await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "hi"))
            assert inserted == 1
        with pytest.raises(RuntimeError, match="roll back"):  # noqa: PT012 # the rollback path
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (2, "lost"))
                raise RuntimeError("roll back")
        assert await store.select("SELECT id, body FROM notes") == [(1, "hi")]
    async with Db(database.url):  # the shadow alone ignores the other component
        pass
    assert ("notes", 1, "create notes") in database.execute(
        "SELECT component, id, name FROM baetyl_migrations"
    )


async def test_a_locking_read_sees_what_committed_after_the_transaction_began(
    database: Database,
) -> None:
    """``select_for_update`` reads rows as committed now, where a plain ``select`` inside a
    MySQL transaction reads the snapshot of the transaction's first read: what a write needs
    that reads a list to update it (the apps mounting a config)."""
    async with Db(database.url, migrations=(*MIGRATIONS, EXTRA)) as store:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "first"))
        async with store.transaction() as tx:
            assert await tx.select("SELECT id, body FROM notes") == [(1, "first")]
            expected = "first"
            if database.dialect == "mysql":  # SQLite's BEGIN IMMEDIATE keeps other writers out
                await asyncio.to_thread(
                    database.execute, "UPDATE notes SET body = 'second' WHERE id = 1"
                )
                assert await tx.select("SELECT id, body FROM notes") == [(1, "first")]
                expected = "second"
            locked = await tx.select_for_update("SELECT id, body FROM notes WHERE id = ?", (1,))
            assert locked == [(1, expected)]


async def test_a_database_error_in_a_transaction_is_a_store_error(database: Database) -> None:
    """A statement the database refuses inside ``transaction()`` rolls it back and raises
    StoreError, as every other store call does, never the driver's own exception."""
    async with Db(database.url, migrations=(*MIGRATIONS, EXTRA)) as store:
        with pytest.raises(StoreError, match="could not complete a transaction") as raised:  # noqa: PT012 # the failing statement is the second of the block
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "undone"))
                await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "secret"))
        assert type(raised.value) is StoreError
        assert "secret" not in str(raised.value)  # no value of the statement in the message
        assert await store.select("SELECT id, body FROM notes") == []


async def test_a_failed_transaction_names_the_database_not_the_shadow_store(
    database: Database,
) -> None:
    """The database is shared (management's tables use it too), so its errors name it, not
    the shadow store: a failed management query must not read as a shadow failure."""
    async with Db(database.url, migrations=(*MIGRATIONS, EXTRA)) as db:
        with pytest.raises(StoreError) as raised:  # noqa: PT012 # the failing statement is the second of the block
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "a"))
                await tx.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "b"))
    assert str(raised.value).startswith("The database could not complete a transaction (")
    assert "shadow" not in str(raised.value)


def test_migration_ids_must_count_up_within_a_component() -> None:
    """A list whose ids skip within a component is a programming error caught at open."""
    broken = Migration(2, "skip", sqlite=("SELECT 1",), mysql=("SELECT 1",), component="notes")
    with pytest.raises(ValueError, match="notes"):
        _check([*MIGRATIONS, broken])

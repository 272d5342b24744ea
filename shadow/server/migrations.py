"""Schema migrations of the ``Database``: an ordered list of SQL steps and their runner.

Every migration belongs to a component (``shadow`` here; the management API adds its own) and
has an id (1, 2, 3, ... in order within its component), a name and its statements for each
dialect. Applied migrations are recorded in ``baetyl_migrations(component, id, name,
applied_at)``; components are applied in the order given. Opening a database
applies the pending ones in order, each in its own transaction; re-opening applies nothing.

Two processes opening the same database at once are serialised: on SQLite each migration runs in
a ``BEGIN IMMEDIATE`` transaction (the database's write lock) and re-checks what is applied; on
MySQL/MariaDB the runner holds the named lock ``GET_LOCK('pybaetyl.migrate.<sha1 of db>')``.
MySQL commits DDL implicitly, so there a migration is atomic only if it is a single DDL statement
(or only DML); write migrations that way.

A database whose record names a migration this code does not know was migrated by a newer
pybaetyl; the runner refuses it rather than guess.

tortoise-orm 1.x ships an experimental migrations framework; it is not used because it
initialises tortoise's global state (not a ``TortoiseContext``), takes no lock against a
concurrent migrator and does not refuse a database migrated by newer code.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from shadow.errors import StoreError

__all__ = ["LOCK_TIMEOUT_S", "MIGRATIONS", "Migration", "migrate_mysql", "migrate_sqlite"]

LOCK_TIMEOUT_S = 30  # how long a process waits for another one that is migrating


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: its id (its place in the order), a name and its SQL per dialect."""

    id: int
    name: str
    sqlite: tuple[str, ...]
    mysql: tuple[str, ...]
    component: str = "shadow"

    def __post_init__(self) -> None:
        if self.id < 1 or not self.name or not self.sqlite or not self.mysql:
            raise ValueError(
                f"Migration {self.id} needs an id >= 1, a name and statements for both dialects."
            )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create shadows",
        sqlite=(
            """CREATE TABLE shadows (
                node_id VARCHAR(255) NOT NULL PRIMARY KEY,
                desired TEXT NOT NULL,
                desired_meta TEXT NOT NULL,
                desired_version BIGINT NOT NULL,
                reported TEXT NOT NULL,
                reported_meta TEXT NOT NULL,
                reported_version BIGINT NOT NULL,
                online BOOLEAN NOT NULL DEFAULT 0,
                last_seen BIGINT NULL,
                updated_at BIGINT NOT NULL
            )""",
        ),
        mysql=(
            """CREATE TABLE shadows (
                node_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                desired MEDIUMTEXT NOT NULL,
                desired_meta MEDIUMTEXT NOT NULL,
                desired_version BIGINT NOT NULL,
                reported MEDIUMTEXT NOT NULL,
                reported_meta MEDIUMTEXT NOT NULL,
                reported_version BIGINT NOT NULL,
                online BOOLEAN NOT NULL DEFAULT FALSE,
                last_seen BIGINT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (node_id)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
        ),
    ),
)

_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS baetyl_migrations (
    component VARCHAR(64) NOT NULL,
    id INTEGER NOT NULL,
    name VARCHAR(255) NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, id)
)"""

_MYSQL_TABLE = """CREATE TABLE baetyl_migrations (
    component VARCHAR(64) NOT NULL,
    id INT NOT NULL,
    name VARCHAR(255) NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (component, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

Key = tuple[str, int]  # (component, id)


def _check(migrations: Sequence[Migration]) -> None:
    """Refuse a list whose ids are not 1, 2, 3, ... within each component (a programming error)."""
    ids: dict[str, list[int]] = {}
    for migration in migrations:
        ids.setdefault(migration.component, []).append(migration.id)
    for component, found in ids.items():
        if found != list(range(1, len(found) + 1)):
            raise ValueError(
                f"Migration ids of {component!r} must be 1, 2, 3, ... in order; fix the list."
            )


def _check_recorded(recorded: dict[Key, str], migrations: Sequence[Migration]) -> None:
    """Refuse a database migrated by newer code, or by code whose migrations differ from ours."""
    known = {(m.component, m.id): m.name for m in migrations}
    components = {m.component for m in migrations}
    for (component, number), name in sorted(recorded.items()):
        if component not in components:
            continue  # another component's tables (e.g. the API's, opened by the shadow alone)
        if (component, number) not in known:
            raise StoreError(
                f"this database was migrated by a newer pybaetyl ({component} migration "
                f"{number}); upgrade pybaetyl to use it."
            )
        if known[(component, number)] != name:
            raise StoreError(
                f"This database records {component} migration {number} as {name!r} but this "
                f"pybaetyl knows it as {known[(component, number)]!r}; open it with the "
                "pybaetyl that created it."
            )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def migrate_sqlite(
    conn: aiosqlite.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the pending ``migrations`` on a SQLite connection in autocommit mode; their ids."""
    _check(migrations)
    applied: list[int] = []
    # One BEGIN IMMEDIATE transaction per migration: it takes the write lock before reading
    # what is applied, so a concurrent opener waits (busy_timeout) and then sees our record.
    for migration in (None, *migrations):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(_SQLITE_TABLE)
            rows = await conn.execute_fetchall("SELECT component, id, name FROM baetyl_migrations")
            recorded = {(str(row[0]), int(row[1])): str(row[2]) for row in rows}
            _check_recorded(recorded, migrations)
            if migration is not None and (migration.component, migration.id) not in recorded:
                for statement in migration.sqlite:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO baetyl_migrations (component, id, name, applied_at) "
                    "VALUES (?, ?, ?, ?)",
                    (migration.component, migration.id, migration.name, _now_ms()),
                )
                applied.append(migration.id)
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return applied


def _lock_name(database: str) -> str:
    """The server-wide lock name for migrating ``database`` (at most 64 characters)."""
    return "pybaetyl.migrate." + hashlib.sha1(database.encode(), usedforsecurity=False).hexdigest()


async def migrate_mysql(
    conn: Any, database: str, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the pending ``migrations`` on an aiomysql connection to ``database``; their ids."""
    _check(migrations)
    lock = _lock_name(database)
    applied: list[int] = []
    async with conn.cursor() as cur:
        await cur.execute("SELECT GET_LOCK(%s, %s)", (lock, LOCK_TIMEOUT_S))
        (got,) = await cur.fetchone()
        if got != 1:
            raise StoreError(
                f"Another process has been migrating database {database!r} for more than "
                f"{LOCK_TIMEOUT_S} s; check for a stuck pybaetyl process and open the store again."
            )
        try:
            await cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = 'baetyl_migrations'"
            )
            (exists,) = await cur.fetchone()
            if not exists:
                await cur.execute(_MYSQL_TABLE)
            await cur.execute("SELECT component, id, name FROM baetyl_migrations")
            recorded = {(str(row[0]), int(row[1])): str(row[2]) for row in await cur.fetchall()}
            _check_recorded(recorded, migrations)
            for migration in migrations:
                if (migration.component, migration.id) in recorded:
                    continue
                await conn.begin()
                try:
                    for statement in migration.mysql:
                        await cur.execute(statement)
                    await cur.execute(
                        "INSERT INTO baetyl_migrations (component, id, name, applied_at) "
                        "VALUES (%s, %s, %s, %s)",
                        (migration.component, migration.id, migration.name, _now_ms()),
                    )
                    await conn.commit()
                except BaseException:
                    await conn.rollback()
                    raise
                applied.append(migration.id)
        finally:
            await cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
            await cur.fetchall()
    return applied

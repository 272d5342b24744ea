"""``SqlShadowStore``: the ``shadows`` table on an open ``Database`` (SQLite or MySQL/MariaDB).

::

    async with Database("sqlite:///var/lib/baetyl/baetyl.db") as db:
        await SqlShadowStore(db).commit([ShadowWrite(record, based_on=None)])

The hot path, ``commit``, is one transaction with batched SQL on the database's driver
connection: on SQLite an ``executemany`` of the UPDATEs, whose total row count is compared with
the number expected (only when it is short is the batch replayed row by row to name the stale
nodes); on MySQL the UPDATEs are sent as multi-statement packets and each statement's matched-row
count (``CLIENT_FOUND_ROWS``) names the stale nodes directly. Durability is the database's
(``database.py``): a ``commit`` that returned has been committed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import suppress
from typing import Any, Final, Protocol

import aiomysql
import aiosqlite

from shadow.document import Section
from shadow.errors import StaleWrite, StoreError
from shadow.server.database import DB_ERRORS, Database, Row, translated
from shadow.server.store import ShadowRecord, ShadowWrite

__all__ = ["SqlShadowStore"]

LOAD_CHUNK: Final = 500  # node ids per SELECT ... IN (...)
MYSQL_PACKET_CHARS: Final = 1_000_000  # well under the default max_allowed_packet (16 MiB)
MYSQL_PACKET_STATEMENTS: Final = 1000

_COLUMNS: Final = (
    "node_id, desired, desired_meta, desired_version, reported, reported_meta, "
    "reported_version, online, last_seen, updated_at"
)
_SET: Final = (
    "desired = {p}, desired_meta = {p}, desired_version = {p}, reported = {p}, "
    "reported_meta = {p}, reported_version = {p}, online = {p}, last_seen = {p}, updated_at = {p}"
)

_IDS_IN: Final = "SELECT node_id FROM shadows WHERE node_id IN "


# --- rows -----------------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# The JSON of a section last written or loaded, by node and side: a write re-encodes only the
# section that changed (a report leaves desired as it was, and the other way round).
Encoded = tuple[Section, str, str]


def _encoded(section: Section, memo: dict[str, Encoded], key: str) -> tuple[str, str]:
    hit = memo.get(key)
    if hit is not None and hit[0] is section:
        return hit[1], hit[2]
    state = section.encoded if section.encoded is not None else _json(section.state)
    metadata = _json(section.metadata)
    memo[key] = (section, state, metadata)
    return state, metadata


def _values(record: ShadowRecord, memo: dict[str, Encoded] | None = None) -> Row:
    """The row values of ``record`` after node_id, in column order."""
    memo = {} if memo is None else memo
    try:
        desired = _encoded(record.desired, memo, "d" + record.node_id)
        reported = _encoded(record.reported, memo, "r" + record.node_id)
        return (
            *desired,
            record.desired.version,
            *reported,
            record.reported.version,
            record.online,
            record.last_seen,
            record.updated_at,
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"The shadow of {record.node_id!r} cannot be stored as JSON ({exc}); nothing was "
            "written. This is a bug in what produced the write; report it."
        ) from None


def _record(row: Sequence[Any]) -> ShadowRecord:
    node_id = str(row[0])
    try:
        desired = Section(json.loads(row[1]), json.loads(row[2]), int(row[3]))
        reported = Section(json.loads(row[4]), json.loads(row[5]), int(row[6]))
    except ValueError as exc:
        raise StoreError(
            f"The stored shadow of {node_id!r} is not valid JSON ({exc}); restore the row "
            "from a backup or delete it."
        ) from None
    last_seen = None if row[8] is None else int(row[8])
    return ShadowRecord(node_id, desired, reported, bool(row[7]), last_seen, int(row[9]))


def _batched(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_list(param: str, count: int) -> str:
    """``(?, ?, ...)``: ``count`` parameter markers for an IN list."""
    return "(" + ", ".join([param] * count) + ")"


def _duplicates(node_ids: Sequence[str], existing: Collection[str]) -> list[str]:
    """The inserted nodes that already exist or appear twice; all of them if none can be told."""
    seen: set[str] = set()
    found: set[str] = set()
    for node_id in node_ids:
        if node_id in existing or node_id in seen:
            found.add(node_id)
        seen.add(node_id)
    return sorted(found) or sorted(seen)


# --- the two dialects' batched writes ------------------------------------------------------------


class _SqliteWriter:
    """A batch on the single aiosqlite connection of the database (held under its lock)."""

    INSERT = f"INSERT INTO shadows ({_COLUMNS}) VALUES ({', '.join('?' * 10)})"  # noqa: S608
    UPDATE = (
        f"UPDATE shadows SET {_SET.format(p='?')} "  # noqa: S608
        "WHERE node_id = ? AND desired_version = ? AND reported_version = ?"
    )

    def __init__(self, db: Database) -> None:
        self._db = db

    async def commit(self, inserts: list[Row], updates: list[Row]) -> None:
        async with self._db.connection() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                if inserts:
                    await self._insert(conn, inserts)
                if updates:
                    cursor = await conn.executemany(self.UPDATE, updates)
                    if cursor.rowcount != len(updates):
                        await conn.rollback()
                        await self._replay(conn, inserts, updates)
                        return
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def _insert(self, conn: aiosqlite.Connection, inserts: list[Row]) -> None:
        try:
            await conn.executemany(self.INSERT, inserts)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            await conn.rollback()
            ids = [row[0] for row in inserts]
            existing: set[str] = set()
            for chunk in _batched(sorted(set(ids)), LOAD_CHUNK):
                sql = _IDS_IN + _in_list("?", len(chunk))
                existing.update(row[0] for row in await conn.execute_fetchall(sql, chunk))
            raise StaleWrite(_duplicates(ids, existing)) from None

    async def _replay(
        self, conn: aiosqlite.Connection, inserts: list[Row], updates: list[Row]
    ) -> None:
        """Redo a short batch row by row to name the stale nodes (or commit, if none is)."""
        await conn.execute("BEGIN IMMEDIATE")
        try:
            if inserts:
                await conn.executemany(self.INSERT, inserts)
            stale = []
            for row in updates:
                cursor = await conn.execute(self.UPDATE, row)
                if cursor.rowcount != 1:
                    stale.append(row[9])
            if stale:
                raise StaleWrite(stale)
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise


class _MySQLWriter:
    """A batch on one connection of the database's aiomysql pool."""

    INSERT = f"INSERT INTO shadows ({_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})"  # noqa: S608
    UPDATE = (
        f"UPDATE shadows SET {_SET.format(p='%s')} "  # noqa: S608
        "WHERE node_id = %s AND desired_version = %s AND reported_version = %s"
    )

    def __init__(self, db: Database) -> None:
        self._db = db

    async def commit(self, inserts: list[Row], updates: list[Row]) -> None:
        async with self._db.connection() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cursor:
                    if inserts:
                        await self._insert(conn, cursor, inserts)
                    stale: list[str] = []
                    for packet in self._packets(cursor, updates):
                        await cursor.execute(";".join(sql for sql, _ in packet))
                        counts = [cursor.rowcount]
                        while await cursor.nextset():
                            counts.append(cursor.rowcount)
                        stale.extend(n for (_, n), c in zip(packet, counts, strict=True) if c != 1)
                    if stale:
                        raise StaleWrite(stale)
                await conn.commit()
            except BaseException:
                with suppress(*DB_ERRORS):
                    await conn.rollback()
                raise

    async def _insert(self, conn: Any, cursor: Any, inserts: list[Row]) -> None:
        try:
            await cursor.executemany(self.INSERT, inserts)  # one multi-row INSERT per ~1 MB
        except aiomysql.IntegrityError as exc:
            if exc.args[0] != 1062:  # ER_DUP_ENTRY
                raise
            await conn.rollback()
            ids = [row[0] for row in inserts]
            existing: set[str] = set()
            for chunk in _batched(sorted(set(ids)), LOAD_CHUNK):
                sql = _IDS_IN + _in_list("%s", len(chunk))
                await cursor.execute(sql, chunk)
                existing.update(row[0] for row in await cursor.fetchall())
            raise StaleWrite(_duplicates(ids, existing)) from None

    def _packets(self, cursor: Any, updates: list[Row]) -> Iterator[list[tuple[str, str]]]:
        """The UPDATEs, rendered by the driver, grouped into packets of bounded size."""
        packet: list[tuple[str, str]] = []
        size = 0
        for row in updates:
            sql = cursor.mogrify(self.UPDATE, row)
            if packet and (
                size + len(sql) > MYSQL_PACKET_CHARS or len(packet) >= MYSQL_PACKET_STATEMENTS
            ):
                yield packet
                packet, size = [], 0
            packet.append((sql, row[9]))
            size += len(sql) + 1
        if packet:
            yield packet


class _Writer(Protocol):
    """What the store needs of a dialect to commit a batch."""

    async def commit(self, inserts: list[Row], updates: list[Row]) -> None: ...


# --- the store ------------------------------------------------------------------------------------


class SqlShadowStore:
    """The shadow store (``ShadowStore``) on the ``shadows`` table of an open ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db: Final = db
        self._encoded: dict[str, Encoded] = {}
        self._writer: _Writer = _SqliteWriter(db) if db.dialect == "sqlite" else _MySQLWriter(db)

    async def load(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        """The stored shadows of ``node_ids``; nodes without one are absent from the result."""
        records: dict[str, ShadowRecord] = {}
        for chunk in _batched(sorted(set(node_ids)), LOAD_CHUNK):
            sql = f"SELECT {_COLUMNS} FROM shadows WHERE node_id IN {_in_list('?', len(chunk))}"  # noqa: S608
            for row in await self.db.select(sql, chunk):
                record = _record(row)
                records[record.node_id] = record
        return records

    async def commit(self, writes: Sequence[ShadowWrite]) -> None:
        """Write all of ``writes`` in one transaction, durably, or none of them.

        Raises ``StaleWrite`` naming the nodes whose row is not at ``based_on`` (or already
        exists, for an insert) and ``StoreError`` if the database fails; nothing is written then.
        """
        self.db.check_open()
        if not writes:
            return
        inserts: list[Row] = []
        updates: list[Row] = []
        # Rows in node order, so that concurrent committers lock them in the same order (no
        # deadlocks); the sort is stable, so two writes of one node keep their order.
        for write in sorted(writes, key=lambda w: w.record.node_id):
            values = _values(write.record, self._encoded)
            if write.based_on is None:
                inserts.append((write.record.node_id, *values))
            else:
                updates.append((*values, write.record.node_id, *write.based_on))
        with translated(
            f"commit {len(writes)} shadow write(s)",
            "nothing was written; retry later, and if it persists check the database.",
        ):
            await self._writer.commit(inserts, updates)

    async def node_ids(self) -> list[str]:
        """Every node id with a stored shadow, sorted."""
        rows = await self.db.select("SELECT node_id FROM shadows", ())
        return sorted(str(row[0]) for row in rows)

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers now (for readiness)."""
        await self.db.ping()

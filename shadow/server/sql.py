"""``TortoiseStore``: the shadow store on SQLite or MySQL/MariaDB, through tortoise-orm.

::

    async with TortoiseStore("sqlite:///var/lib/baetyl/baetyl.db") as store:
        await store.commit([ShadowWrite(record, based_on=None)])

Opening connects, applies pending schema migrations (``shadow/server/migrations.py``) and returns
a usable store; leaving the block closes every connection. Each store owns its own
``TortoiseContext``, so several stores (on different databases) can live in one process.

The hot path, ``commit``, is one transaction with batched SQL on the tortoise client's driver
connection: on SQLite an ``executemany`` of the UPDATEs, whose total row count is compared with
the number expected (only when it is short is the batch replayed row by row to name the stale
nodes); on MySQL the UPDATEs are sent as multi-statement packets and each statement's matched-row
count (``CLIENT_FOUND_ROWS``) names the stale nodes directly.

Durability. A ``commit`` that returned has been committed by the database, so it survives the
process being killed (SIGKILL) on both backends. Against power loss: SQLite runs in WAL mode
with ``synchronous=FULL`` by default, which fsyncs the WAL at every commit, so a returned commit
survives power loss too (the service groups many shadow changes into one commit, which amortises
the fsync). ``?synchronous=normal`` in the URL trades that for speed: still safe against process
crashes, but the last commits before a power loss may be rolled back (never corrupted). On
MySQL/MariaDB power-loss durability is the server's: InnoDB's defaults
(``innodb_flush_log_at_trx_commit=1``, and ``sync_binlog=1`` if the binlog is on) provide it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

import aiomysql
import aiosqlite
from pymysql.constants import CLIENT
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext
from tortoise.exceptions import BaseORMException

from shadow.document import Section
from shadow.errors import StaleWrite, StoreError
from shadow.server.migrations import MIGRATIONS, Migration, migrate_mysql, migrate_sqlite
from shadow.server.store import ShadowRecord, ShadowWrite

__all__ = ["TortoiseStore"]

ACCEPTED_URLS: Final = (
    "sqlite:///absolute/path/to/baetyl.db (optionally ?synchronous=full|normal) or "
    "mysql://user:password@host:3306/database"
)
SQLITE_BUSY_TIMEOUT_MS: Final = 5000  # wait this long for another process's write lock
MYSQL_CONNECT_TIMEOUT_S: Final = 5
MYSQL_POOL_MIN, MYSQL_POOL_MAX = 1, 5
LOAD_CHUNK: Final = 500  # node ids per SELECT ... IN (...)
MYSQL_PACKET_CHARS: Final = 1_000_000  # well under the default max_allowed_packet (16 MiB)
MYSQL_PACKET_STATEMENTS: Final = 1000

# The errors a database operation can raise: the drivers', tortoise's, and the OS's (I/O,
# timeouts, refused connections).
_DB_ERRORS: Final = (sqlite3.Error, aiomysql.Error, BaseORMException, OSError)

_COLUMNS: Final = (
    "node_id, desired, desired_meta, desired_version, reported, reported_meta, "
    "reported_version, online, last_seen, updated_at"
)
_SET: Final = (
    "desired = {p}, desired_meta = {p}, desired_version = {p}, reported = {p}, "
    "reported_meta = {p}, reported_version = {p}, online = {p}, last_seen = {p}, updated_at = {p}"
)

_IDS_IN: Final = "SELECT node_id FROM shadows WHERE node_id IN "

Row = tuple[Any, ...]


# --- the URL --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    """A SQLite database file and how hard each commit is synced."""

    path: str
    synchronous: Literal["FULL", "NORMAL"] = "FULL"

    def describe(self) -> str:
        return f"SQLite database {self.path}"


@dataclass(frozen=True, slots=True)
class MySQLTarget:
    """A MySQL/MariaDB database and the account to reach it with."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    def describe(self) -> str:
        return f"MySQL database {self.database!r} at {self.host}:{self.port} as {self.user!r}"


def _bad_url(url: str, why: str) -> StoreError:
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)  # never echo a password
    return StoreError(f"The shadow store URL {shown!r} {why}; use {ACCEPTED_URLS}.")


def parse_url(url: str) -> SqliteTarget | MySQLTarget:
    """The database a store URL names; ``StoreError`` naming the accepted forms if it is bad."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad_url(url, f"is malformed ({exc})") from None
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        query = {"": [""]} if parts.query else {}
    if parts.fragment:
        raise _bad_url(url, "has a #fragment")
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path.endswith("/"):
            raise _bad_url(url, "does not name an absolute file path")
        synchronous = "FULL"
        for key, values in query.items():
            if key != "synchronous" or values[-1].upper() not in ("FULL", "NORMAL"):
                raise _bad_url(url, f"has an unknown option {key!r}")
            synchronous = values[-1].upper()
        return SqliteTarget(
            urllib.parse.unquote(parts.path), "FULL" if synchronous == "FULL" else "NORMAL"
        )
    if parts.scheme == "mysql":
        database = parts.path.removeprefix("/")
        if not parts.hostname or not parts.username:
            raise _bad_url(url, "needs a user and a host")
        if not re.fullmatch(r"[A-Za-z0-9_$]{1,64}", database):
            raise _bad_url(url, "needs a database name (letters, digits, _ and $)")
        if query:
            raise _bad_url(url, f"has options ({parts.query}) that are not supported")
        return MySQLTarget(
            host=parts.hostname,
            port=port or 3306,
            user=urllib.parse.unquote(parts.username),
            password=urllib.parse.unquote(parts.password or ""),
            database=database,
        )
    raise _bad_url(url, f"has an unsupported scheme {parts.scheme!r}")


def _tortoise_config(target: SqliteTarget | MySQLTarget) -> dict[str, Any]:
    """The tortoise config of one connection named ``default`` to ``target``."""
    if isinstance(target, SqliteTarget):
        # SqliteClient runs every credential other than file_path as ``PRAGMA key=value`` on
        # connect, in this order (busy_timeout first: switching to WAL may wait for a lock).
        # tortoise's own URL parser passes query parameters through unchecked; we do not use it.
        engine = "tortoise.backends.sqlite"
        credentials: dict[str, Any] = {
            "file_path": target.path,
            "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            "journal_mode": "WAL",
            "synchronous": target.synchronous,
            "foreign_keys": "ON",
        }
    else:
        # autocommit stays on (tortoise forces it); commit() opens explicit transactions.
        # CLIENT_FOUND_ROWS: an UPDATE's row count is the rows matched, not the rows changed.
        engine = "tortoise.backends.mysql"
        credentials = {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "password": target.password,
            "database": target.database,
            "charset": "utf8mb4",
            "minsize": MYSQL_POOL_MIN,
            "maxsize": MYSQL_POOL_MAX,
            "connect_timeout": MYSQL_CONNECT_TIMEOUT_S,
            "pool_recycle": 3600,
            "client_flag": CLIENT.FOUND_ROWS,
            # aiomysql sends SET sql_mode={this} unquoted
            "sql_mode": "'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
        }
    return {
        "connections": {"default": {"engine": engine, "credentials": credentials}},
        "apps": {"shadow": {"models": ["shadow.server.models"], "default_connection": "default"}},
    }


def _check_directory(target: SqliteTarget) -> None:
    """Refuse a SQLite path whose directory does not exist, saying so."""
    directory = os.path.dirname(target.path)
    if not os.path.isdir(directory):
        raise StoreError(
            f"The shadow store could not open the {target.describe()}: {directory} is not a "
            "directory; check that its directory exists and this process may write there."
        )


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


def _describe(exc: BaseException) -> str:
    """The cause of a database error, without values from the statement (they may hold state).

    The server quotes values it cites ("Duplicate entry '...'"); the client's own errors
    (MySQL codes 2000-2999: cannot connect, connection lost) cite no statement and are kept
    whole, so that the log says which server could not be reached.
    """
    cause = exc.__cause__ if isinstance(exc, BaseORMException) and exc.__cause__ else exc
    text = str(cause)
    code = cause.args[0] if isinstance(cause, aiomysql.Error) and cause.args else None
    if not (isinstance(code, int) and 2000 <= code < 3000):
        text = re.sub(r"'(?:[^'\\]|\\.)*'", "'…'", text)
    return f"{type(cause).__name__}: {text[:300]}"


@contextmanager
def _translated(action: str, advice: str) -> Iterator[None]:
    """Turn a database error inside the block into a ``StoreError`` saying what to do."""
    try:
        yield
    except _DB_ERRORS as exc:
        raise StoreError(
            f"The shadow store could not {action} ({_describe(exc)}); {advice}"
        ) from exc


@asynccontextmanager
async def _translated_transaction(backend: _Backend) -> AsyncIterator[Transaction]:
    """``backend.transaction()`` with its database errors turned into ``StoreError``."""
    with _translated("complete a transaction", "retry later; if it persists, check the database."):
        async with backend.transaction() as tx:
            yield tx


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


# --- the two dialects -----------------------------------------------------------------------------


class _Backend(Protocol):
    """What the store needs of a dialect: migrate, select, and commit one batch."""

    param: str  # the driver's parameter marker

    async def migrate(self, migrations: Sequence[Migration]) -> None: ...
    async def select(self, sql: str, params: Sequence[Any]) -> list[Row]: ...
    async def commit(self, inserts: list[Row], updates: list[Row]) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...


class Transaction(Protocol):
    """Plain SQL inside one transaction (``?`` marks parameters, whatever the dialect)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it matched."""
        ...

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def select_for_update(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A locking read: the latest committed rows, which no other transaction may change
        (nor, for a range, insert into) until this one ends. A plain ``select`` in MySQL's
        REPEATABLE READ reads the snapshot of the transaction's first read instead."""
        ...


class _Sqlite:
    """SQL on the single aiosqlite connection of a tortoise SqliteClient (held under its lock)."""

    INSERT = f"INSERT INTO shadows ({_COLUMNS}) VALUES ({', '.join('?' * 10)})"  # noqa: S608
    UPDATE = (
        f"UPDATE shadows SET {_SET.format(p='?')} "  # noqa: S608
        "WHERE node_id = ? AND desired_version = ? AND reported_version = ?"
    )
    param = "?"

    def __init__(self, client: BaseDBAsyncClient) -> None:
        self._client = client

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        async with self._client.acquire_connection() as conn:
            # Switching a fresh file to WAL needs it unlocked; another process opening it at
            # the same moment can hold it briefly, so try again for a few seconds.
            mode = ""
            for _attempt in range(50):
                rows = await conn.execute_fetchall("PRAGMA journal_mode")
                mode = str(next(iter(rows))[0]).lower()
                if mode == "wal":
                    break
                with suppress(sqlite3.OperationalError):
                    await conn.execute("PRAGMA journal_mode=WAL")
                await asyncio.sleep(0.1)
            if mode != "wal":
                raise StoreError(
                    "SQLite could not switch the shadow database to WAL mode; put it on a local "
                    "file system that supports shared memory (not a network share)."
                )
            await migrate_sqlite(conn, migrations)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._client.acquire_connection() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(conn)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def select(self, sql: str, params: Sequence[Any]) -> list[Row]:
        async with self._client.acquire_connection() as conn:
            return [tuple(row) for row in await conn.execute_fetchall(sql, params)]

    async def commit(self, inserts: list[Row], updates: list[Row]) -> None:
        async with self._client.acquire_connection() as conn:
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


class _MySQL:
    """SQL on connections of a tortoise MySQLClient's aiomysql pool."""

    INSERT = f"INSERT INTO shadows ({_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})"  # noqa: S608
    UPDATE = (
        f"UPDATE shadows SET {_SET.format(p='%s')} "  # noqa: S608
        "WHERE node_id = %s AND desired_version = %s AND reported_version = %s"
    )
    param = "%s"

    def __init__(self, client: BaseDBAsyncClient, database: str) -> None:
        self._client = client
        self._database = database

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        async with self._client.acquire_connection() as conn:
            await migrate_mysql(conn, self._database, migrations)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._client.acquire_connection() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cursor:
                    yield _MySQLTransaction(cursor)
                await conn.commit()
            except BaseException:
                with suppress(*_DB_ERRORS):
                    await conn.rollback()
                raise

    async def select(self, sql: str, params: Sequence[Any]) -> list[Row]:
        async with self._client.acquire_connection() as conn, conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall())

    async def commit(self, inserts: list[Row], updates: list[Row]) -> None:
        async with self._client.acquire_connection() as conn:
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
                with suppress(*_DB_ERRORS):
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


class _SqliteTransaction:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        return int(cursor.rowcount)

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(row) for row in await self._conn.execute_fetchall(sql, params)]

    async def select_for_update(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # BEGIN IMMEDIATE: no other writer runs until this transaction ends, and reads see the
        # latest committed rows.
        return await self.select(sql, params)


class _MySQLTransaction:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._cursor.execute(sql.replace("?", "%s"), params)
        return int(self._cursor.rowcount)

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        await self._cursor.execute(sql.replace("?", "%s"), params)
        return [tuple(row) for row in await self._cursor.fetchall()]

    async def select_for_update(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.select(sql + " FOR UPDATE", params)


# --- the store ------------------------------------------------------------------------------------


class TortoiseStore:
    """The shadow store on SQLite or MySQL/MariaDB; an async context manager that owns its pool.

    ``url`` is ``sqlite:///absolute/path.db`` or ``mysql://user:password@host:port/database``;
    a bad one raises ``StoreError`` here. Entering connects and migrates the schema.
    """

    def __init__(self, url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self.target: Final = parse_url(url)
        self._migrations = tuple(migrations)
        self._encoded: dict[str, Encoded] = {}
        self._context: TortoiseContext | None = None
        self._backend: _Backend | None = None

    @classmethod
    def open(cls, url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> TortoiseStore:
        """The store for ``url``, to be entered with ``async with``."""
        return cls(url, migrations=migrations)

    @property
    def dialect(self) -> Literal["sqlite", "mysql"]:
        """Which database this store talks to."""
        return "sqlite" if isinstance(self.target, SqliteTarget) else "mysql"

    async def __aenter__(self) -> Self:
        # Two processes opening a fresh SQLite file at once: switching it to WAL needs it
        # unlocked, and SQLite reports "database is locked" at once rather than waiting.
        for _attempt in range(20):
            try:
                return await self._open()
            except StoreError as exc:
                if self.dialect != "sqlite" or "database is locked" not in str(exc):
                    raise
                await asyncio.sleep(0.1)
        return await self._open()

    async def _open(self) -> Self:
        if self._context is not None:
            raise StoreError("This shadow store is already open; open it once per async with.")
        if isinstance(self.target, SqliteTarget):
            _check_directory(self.target)  # before aiosqlite, whose failed connect leaks a thread
        context = TortoiseContext()
        self._context = context
        try:
            with context:  # current only while tortoise binds the app to its connections
                await context.init(config=_tortoise_config(self.target))
            client = context.db()
            backend: _Backend
            if isinstance(self.target, SqliteTarget):
                backend = _Sqlite(client)
                advice = "check that its directory exists and this process may write there."
            else:
                backend = _MySQL(client, self.target.database)
                advice = (
                    "check that the server runs and is reachable, the user and password are "
                    "right, and the database exists "
                    f"(CREATE DATABASE {self.target.database} CHARACTER SET utf8mb4)."
                )
            with _translated(f"open the {self.target.describe()}", advice):
                await backend.migrate(self._migrations)
            self._backend = backend
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        context, self._context, self._backend = self._context, None, None
        if context is not None:
            with suppress(*_DB_ERRORS):
                await context.close_connections()

    def _open_backend(self) -> _Backend:
        if self._backend is None:
            raise StoreError("This shadow store is not open; use it inside async with.")
        return self._backend

    async def load(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        """The stored shadows of ``node_ids``; nodes without one are absent from the result."""
        backend = self._open_backend()
        records: dict[str, ShadowRecord] = {}
        with _translated("load shadows", "retry later; if it persists, check the database."):
            for chunk in _batched(sorted(set(node_ids)), LOAD_CHUNK):
                marks = _in_list(backend.param, len(chunk))
                sql = f"SELECT {_COLUMNS} FROM shadows WHERE node_id IN {marks}"  # noqa: S608
                for row in await backend.select(sql, chunk):
                    record = _record(row)
                    records[record.node_id] = record
        return records

    async def commit(self, writes: Sequence[ShadowWrite]) -> None:
        """Write all of ``writes`` in one transaction, durably, or none of them.

        Raises ``StaleWrite`` naming the nodes whose row is not at ``based_on`` (or already
        exists, for an insert) and ``StoreError`` if the database fails; nothing is written then.
        """
        backend = self._open_backend()
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
        with _translated(
            f"commit {len(writes)} shadow write(s)",
            "nothing was written; retry later, and if it persists check the database.",
        ):
            await backend.commit(inserts, updates)

    async def node_ids(self) -> list[str]:
        """Every node id with a stored shadow, sorted."""
        backend = self._open_backend()
        with _translated("list shadows", "retry later; if it persists, check the database."):
            rows = await backend.select("SELECT node_id FROM shadows", ())
        return sorted(str(row[0]) for row in rows)

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers now (for readiness)."""
        backend = self._open_backend()
        with _translated(
            f"reach the {self.target.describe()}",
            "check that the database runs and is reachable from here.",
        ):
            await backend.select("SELECT 1", ())

    # -- plain SQL for the other stores on the same database (the management API's) ----------

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One transaction (``async with store.transaction() as tx``); rolled back on error.

        A database error (connecting, BEGIN, a statement, COMMIT) is raised as ``StoreError``,
        like every other method's, so that a database outage reads the same to every caller;
        any other exception raised in the block passes through unchanged after the rollback.
        """
        return _translated_transaction(self._open_backend())

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one query outside a transaction (``?`` marks parameters)."""
        backend = self._open_backend()
        if backend.param != "?":
            sql = sql.replace("?", backend.param)
        with _translated("read from the database", "retry later; if it persists, check it."):
            return await backend.select(sql, params)

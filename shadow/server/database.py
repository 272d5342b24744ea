"""``Database``: one SQLite or MySQL/MariaDB database, through tortoise-orm, for every table.

::

    async with Database("sqlite:///var/lib/baetyl/baetyl.db", migrations=MIGRATIONS) as db:
        async with db.transaction() as tx:
            await tx.execute("UPDATE ...", (...))

Opening connects, applies pending schema migrations (``shadow/server/migrations.py``; each
component adds its own) and returns a usable database; leaving the block closes every
connection. Each database owns its own ``TortoiseContext``, so several (on different databases)
can live in one process. The shadows table is ``SqlShadowStore`` (``shadows.py``); management's
tables are ``ResourceStore``; both take an open ``Database``.

Every database error (connecting, BEGIN, a statement, COMMIT) is raised as ``StoreError``
saying what failed and what to do, so an outage reads the same to every caller.

Durability. A commit that returned has been committed by the database, so it survives the
process being killed (SIGKILL) on both backends. Against power loss: SQLite runs in WAL mode
with ``synchronous=FULL`` by default, which fsyncs the WAL at every commit, so a returned commit
survives power loss too (the shadow service groups many shadow changes into one commit, which
amortises the fsync). ``?synchronous=normal`` in the URL trades that for speed: still safe
against process crashes, but the last commits before a power loss may be rolled back (never
corrupted). On MySQL/MariaDB power-loss durability is the server's: InnoDB's defaults
(``innodb_flush_log_at_trx_commit=1``, and ``sync_binlog=1`` if the binlog is on) provide it.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
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

from shadow.errors import StoreError
from shadow.server.migrations import MIGRATIONS, Migration, migrate_mysql, migrate_sqlite

__all__ = [
    "ACCEPTED_URLS",
    "DB_ERRORS",
    "Database",
    "MySQLTarget",
    "Row",
    "SqliteTarget",
    "Transaction",
    "translated",
]

ACCEPTED_URLS: Final = (
    "sqlite:///absolute/path/to/baetyl.db (optionally ?synchronous=full|normal) or "
    "mysql://user:password@host:3306/database"
)
SQLITE_BUSY_TIMEOUT_MS: Final = 5000  # wait this long for another process's write lock
MYSQL_CONNECT_TIMEOUT_S: Final = 5
MYSQL_POOL_MIN, MYSQL_POOL_MAX = 1, 5

# The errors a database operation can raise: the drivers', tortoise's, and the OS's (I/O,
# timeouts, refused connections).
DB_ERRORS: Final = (sqlite3.Error, aiomysql.Error, BaseORMException, OSError)

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
    return StoreError(f"The database URL {shown!r} {why}; use {ACCEPTED_URLS}.")


def parse_url(url: str) -> SqliteTarget | MySQLTarget:
    """The database a URL names; ``StoreError`` naming the accepted forms if it is bad."""
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
            f"The {target.describe()} cannot be opened: {directory} is not a "
            "directory; check that its directory exists and this process may write there."
        )


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
def translated(action: str, advice: str, *, what: str = "The database") -> Iterator[None]:
    """Turn a database error inside the block into a ``StoreError`` saying what to do."""
    try:
        yield
    except DB_ERRORS as exc:
        raise StoreError(f"{what} could not {action} ({_describe(exc)}); {advice}") from exc


@asynccontextmanager
async def _translated_transaction(dialect: Dialect) -> AsyncIterator[Transaction]:
    """``dialect.transaction()`` with its database errors turned into ``StoreError``."""
    with translated("complete a transaction", "retry later; if it persists, check the database."):
        async with dialect.transaction() as tx:
            yield tx


# --- the two dialects -----------------------------------------------------------------------------


class Dialect(Protocol):
    """What the database needs of a dialect: migrate, select, a transaction, a raw connection."""

    param: str  # the driver's parameter marker

    async def migrate(self, migrations: Sequence[Migration]) -> None: ...
    async def select(self, sql: str, params: Sequence[Any]) -> list[Row]: ...
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...
    def connection(self) -> AbstractAsyncContextManager[Any]: ...


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

    param = "?"

    def __init__(self, client: BaseDBAsyncClient) -> None:
        self._client = client

    def connection(self) -> AbstractAsyncContextManager[Any]:
        return self._client.acquire_connection()

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
                    "SQLite could not switch the database to WAL mode; put it on a local "
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


class _MySQL:
    """SQL on connections of a tortoise MySQLClient's aiomysql pool."""

    param = "%s"

    def __init__(self, client: BaseDBAsyncClient, database: str) -> None:
        self._client = client
        self._database = database

    def connection(self) -> AbstractAsyncContextManager[Any]:
        return self._client.acquire_connection()

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
                with suppress(*DB_ERRORS):
                    await conn.rollback()
                raise

    async def select(self, sql: str, params: Sequence[Any]) -> list[Row]:
        async with self._client.acquire_connection() as conn, conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall())


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


# --- the database ---------------------------------------------------------------------------------


class Database:
    """One SQLite or MySQL/MariaDB database; an async context manager that owns its pool.

    ``url`` is ``sqlite:///absolute/path.db`` or ``mysql://user:password@host:port/database``;
    a bad one raises ``StoreError`` here. Entering connects and applies ``migrations``.
    """

    def __init__(self, url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        self.target: Final = parse_url(url)
        self._migrations = tuple(migrations)
        self._context: TortoiseContext | None = None
        self._dialect: Dialect | None = None

    @classmethod
    def open(cls, url: str, *, migrations: Sequence[Migration] = MIGRATIONS) -> Database:
        """The database for ``url``, to be entered with ``async with``."""
        return cls(url, migrations=migrations)

    @property
    def dialect(self) -> Literal["sqlite", "mysql"]:
        """Which database this is."""
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
            raise StoreError("This database is already open; open it once per async with.")
        if isinstance(self.target, SqliteTarget):
            _check_directory(self.target)  # before aiosqlite, whose failed connect leaks a thread
        context = TortoiseContext()
        self._context = context
        try:
            with context:  # current only while tortoise binds the app to its connections
                await context.init(config=_tortoise_config(self.target))
            client = context.db()
            dialect: Dialect
            if isinstance(self.target, SqliteTarget):
                dialect = _Sqlite(client)
                advice = "check that its directory exists and this process may write there."
            else:
                dialect = _MySQL(client, self.target.database)
                advice = (
                    "check that the server runs and is reachable, the user and password are "
                    "right, and the database exists "
                    f"(CREATE DATABASE {self.target.database} CHARACTER SET utf8mb4)."
                )
            with translated("be opened", advice, what=f"The {self.target.describe()}"):
                await dialect.migrate(self._migrations)
            self._dialect = dialect
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
        context, self._context, self._dialect = self._context, None, None
        if context is not None:
            with suppress(*DB_ERRORS):
                await context.close_connections()

    def _open_dialect(self) -> Dialect:
        if self._dialect is None:
            raise StoreError("This database is not open; use it inside async with.")
        return self._dialect

    def check_open(self) -> None:
        """Raise ``StoreError`` unless this database is open."""
        self._open_dialect()

    @property
    def param(self) -> str:
        """The driver's parameter marker (``?`` on SQLite, ``%s`` on MySQL)."""
        return self._open_dialect().param

    def connection(self) -> AbstractAsyncContextManager[Any]:
        """The driver's own connection (aiosqlite or aiomysql), for batched SQL of a table's own.

        Nothing is translated: wrap its use in ``translated``.
        """
        return self._open_dialect().connection()

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers now (for readiness)."""
        dialect = self._open_dialect()
        with translated(
            "be reached",
            "check that the database runs and is reachable from here.",
            what=f"The {self.target.describe()}",
        ):
            await dialect.select("SELECT 1", ())

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One transaction (``async with db.transaction() as tx``); rolled back on error.

        A database error (connecting, BEGIN, a statement, COMMIT) is raised as ``StoreError``,
        like every other method's, so that a database outage reads the same to every caller;
        any other exception raised in the block passes through unchanged after the rollback.
        """
        return _translated_transaction(self._open_dialect())

    async def select(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one query outside a transaction (``?`` marks parameters)."""
        dialect = self._open_dialect()
        if dialect.param != "?":
            sql = sql.replace("?", dialect.param)
        with translated("run a query", "retry later; if it persists, check it."):
            return await dialect.select(sql, params)

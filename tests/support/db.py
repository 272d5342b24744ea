"""Test databases: a fresh one on each backend (SQLite file, MariaDB), with raw SQL on the side.

MariaDB is expected at 127.0.0.1:3306 as root with an empty password. If it cannot be reached
the MariaDB tests skip, or fail under any truthy ``CI`` (``require_mariadb``, tests/support/ci.py).
The fixtures (``mariadb``, ``database``) are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pymysql

from tests.support.ci import missing

MYSQL_HOST, MYSQL_PORT, MYSQL_USER = "127.0.0.1", 3306, "root"


@dataclass(frozen=True, slots=True)
class Database:
    """A test database: the store URL to open it with and a side door for raw SQL."""

    dialect: Literal["sqlite", "mysql"]
    url: str
    path: Path | None = None  # the SQLite file
    name: str = ""  # the MySQL database

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement outside the store (autocommit); its rows."""
        if self.dialect == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                return [tuple(row) for row in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        mysql = mysql_connect(self.name)
        try:
            with mysql.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            mysql.close()


def mysql_connect(database: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        password="",
        database=database,
        connect_timeout=3,
        autocommit=True,
    )


@contextlib.contextmanager
def fresh_mysql_database(prefix: str) -> Iterator[Database]:
    """A new, empty MariaDB database ``<prefix>_<hex>``, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = mysql_connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        yield Database(
            "mysql", f"mysql://{MYSQL_USER}:@{MYSQL_HOST}:{MYSQL_PORT}/{name}", name=name
        )
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def require_mariadb() -> None:
    """MariaDB answers at 127.0.0.1:3306; otherwise skip (fail under CI)."""
    try:
        mysql_connect().close()
    except pymysql.Error as exc:
        missing(
            f"MariaDB is not reachable at {MYSQL_HOST}:{MYSQL_PORT} as {MYSQL_USER} ({exc}); "
            "start it (apt-get install mariadb-server) to run the MySQL store tests."
        )


def sqlite_database(tmp_path: Path) -> Database:
    """A fresh SQLite database file in ``tmp_path``."""
    path = tmp_path / "baetyl.db"
    return Database("sqlite", f"sqlite://{path}", path=path)

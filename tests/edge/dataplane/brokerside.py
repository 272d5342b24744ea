"""The node broker's side of the spool, as the node broker writes it, written here from the
contract (not from ``edge.dataplane.spool``) so the tests check the two sides agree."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
    topic TEXT NOT NULL, device TEXT NOT NULL, qos INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (route TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (route TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class BrokerSpool:
    """A second connection, as the node broker process holds one: WAL, synchronous=FULL."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA busy_timeout = 10000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA user_version = 1")

    def insert(self, rows: Iterable[tuple[str, str, bytes]], qos: int = 1) -> list[int]:
        """Insert (topic, device, payload) rows in one commit (a group commit); their ids."""
        ids = []
        self.db.execute("BEGIN IMMEDIATE")
        for topic, device, payload in rows:
            cursor = self.db.execute(
                "INSERT INTO messages (ts, topic, device, qos, payload) VALUES (?, ?, ?, ?, ?)",
                (time.time(), topic, device, qos, payload),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        self.db.execute("COMMIT")
        return ids

    def drop_oldest(self, count: int, routes: dict[str, str]) -> None:
        """Delete the ``count`` oldest rows as the broker's bounds would, counting drops for
        the routes (name -> filter) whose cursor is below a deleted row that matches them."""
        from broker.acl import filter_matches

        self.db.execute("BEGIN IMMEDIATE")
        rows = self.db.execute(
            "SELECT id, topic FROM messages ORDER BY id LIMIT ?", (count,)
        ).fetchall()
        cursors = dict(self.db.execute("SELECT route, last_id FROM cursors").fetchall())
        for row_id, topic in rows:
            for route, topic_filter in routes.items():
                if filter_matches(topic_filter, topic) and cursors.get(route, 0) < row_id:
                    self.db.execute(
                        "INSERT INTO drops (route, count) VALUES (?, 1)"
                        " ON CONFLICT (route) DO UPDATE SET count = count + 1",
                        (route,),
                    )
            self.db.execute("DELETE FROM messages WHERE id = ?", (row_id,))
        self.db.execute("COMMIT")

    def ids(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT id FROM messages ORDER BY id")]

    def cursors(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT route, last_id FROM cursors").fetchall())

    def close(self) -> None:
        self.db.close()

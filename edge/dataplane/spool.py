"""The agent's side of the spool: the SQLite database the node broker writes and routes read.

The node broker (another process) inserts into ``messages`` every PUBLISH a route's local source
matches, committed before the device's PUBACK, and counts in ``drops`` what its bounds deleted
unread. The agent reads ``messages`` after each route's cursor, keeps the cursors in ``cursors``
and deletes the rows below every cursor. Both sides create the schema (``IF NOT EXISTS``,
``user_version`` 1); WAL lets the broker append while the agent reads, and ``busy_timeout``
makes either wait out the other's write rather than fail.

The agent's connection commits with ``synchronous=NORMAL``: what it writes (cursors, deletes of
acknowledged rows) may be lost with the machine's power, which only means some messages are sent
again (at least once); what the broker writes it commits with ``FULL``.

A ``Spool`` is one connection; it is used from one thread at a time (the router gives it a thread
of its own, so the event loop never waits on the disk).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge.dataplane.filters import matches
from edge.errors import DataPlaneError

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Row", "Spool"]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
    topic TEXT NOT NULL, device TEXT NOT NULL, qos INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (route TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (route TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""
BUSY_TIMEOUT_MS = 10_000
DELETE_CHUNK = 5_000  # rows per delete: the broker's next commit waits at most that long


@dataclass(frozen=True, slots=True)
class Row:
    """One spooled message."""

    id: int
    ts: float
    topic: str
    device: str
    qos: int
    payload: bytes


class Spool:
    """One connection to the spool database (created with its schema if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise DataPlaneError(
                f"Cannot open the spool {path} ({exc}); check the node broker's directory."
            ) from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DataPlaneError(
                    f"The spool {path} has schema version {version}, newer than this agent's "
                    f"{SCHEMA_VERSION}; upgrade the agent."
                )
            self._db.executescript(SCHEMA)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # -- the log -------------------------------------------------------------------------------

    def end(self) -> int:
        """The highest id ever given (a deleted row's too): where a new route's cursor starts."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
            " coalesce((SELECT max(id) FROM messages), 0))"
        ).fetchone()
        return int(row[0])

    def first(self) -> int | None:
        """The lowest id still in the log, or None if it is empty."""
        row = self._db.execute("SELECT min(id) FROM messages").fetchone()
        return None if row[0] is None else int(row[0])

    def read(self, after: int, limit: int) -> list[Row]:
        """Up to ``limit`` rows with ids above ``after``, in id order."""
        return [
            Row(int(i), float(ts), str(topic), str(device), int(qos), bytes(payload))
            for i, ts, topic, device, qos, payload in self._db.execute(
                "SELECT id, ts, topic, device, qos, payload FROM messages WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (after, limit),
            )
        ]

    def queued(self, after: int, topic_filter: str, *, scan: int = 10_000) -> tuple[int, bool]:
        """How many rows above ``after`` match ``topic_filter``, and whether that is exact: the
        first ``scan`` rows are matched one by one; beyond them every row is counted (an upper
        bound), so the count stays cheap for a deep backlog."""
        count = 0
        last = after
        seen = 0
        for row_id, topic in self._db.execute(
            "SELECT id, topic FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after, scan)
        ):
            seen += 1
            last = row_id
            if matches(topic_filter, topic):
                count += 1
        if seen < scan:
            return count, True
        rest = self._db.execute("SELECT count(*) FROM messages WHERE id > ?", (last,)).fetchone()
        return count + int(rest[0]), rest[0] == 0

    def delete_through(self, last_id: int) -> int:
        """Delete the rows with ids up to ``last_id`` (in chunks, each its own transaction, so
        the broker's commits wait for one chunk at most); how many were deleted."""
        deleted = 0
        while True:
            first = self.first()
            if first is None or first > last_id:
                return deleted
            upto = min(last_id, first + DELETE_CHUNK - 1)
            deleted += self._db.execute("DELETE FROM messages WHERE id <= ?", (upto,)).rowcount

    # -- cursors and drops -----------------------------------------------------------------------

    def cursors(self) -> dict[str, int]:
        """Each route's cursor: the id of the last row it is done with."""
        return {str(r): int(i) for r, i in self._db.execute("SELECT route, last_id FROM cursors")}

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Write these routes' cursors in one transaction."""
        if not cursors:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO cursors (route, last_id) VALUES (?, ?)"
                " ON CONFLICT (route) DO UPDATE SET last_id = excluded.last_id",
                list(cursors.items()),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def create_cursor(self, route: str) -> int:
        """``route``'s cursor, made at the end of the log if it has none (no history replay)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO cursors (route, last_id) VALUES (?, ?)", (route, self.end())
            )
            row = self._db.execute(
                "SELECT last_id FROM cursors WHERE route = ?", (route,)
            ).fetchone()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return int(row[0])

    def delete_cursor(self, route: str) -> None:
        """Forget a removed route: its cursor (and its drop count)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM cursors WHERE route = ?", (route,))
            self._db.execute("DELETE FROM drops WHERE route = ?", (route,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def drops(self) -> dict[str, int]:
        """Per route, how many of its rows the broker's bounds deleted before it read them."""
        return {str(r): int(c) for r, c in self._db.execute("SELECT route, count FROM drops")}

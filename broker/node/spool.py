"""The spool: what devices publish to a route's source, on disk before they get their PUBACK.

SQLite in WAL mode with ``synchronous=FULL`` (a commit is on disk when it returns), the schema of
PROTOCOL.md "Node broker" (``messages``, ``cursors``, ``drops``; ``user_version`` 1). The agent,
another process, reads and deletes rows and writes ``cursors`` concurrently; both use a busy
timeout.

Group commit: the event loop appends rows to a pending batch (``add`` returns the batch's ticket)
and goes on reading; one writer thread inserts everything pending and commits it in one
transaction, then hands the batch's last id back to the loop (``on_commit``), which releases the
PUBACKs waiting for that ticket. One fsync covers whatever arrived during the previous one.

Bounds: when the rows' payload bytes exceed ``maxBytes`` or the oldest row is older than
``maxAgeSeconds``, the oldest rows are deleted; each deleted row counts one drop for every route
whose filter matches its topic and whose cursor is below its id.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from broker.acl import filter_matches
from broker.errors import SpoolError

__all__ = ["SCHEMA", "SpoolWriter"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
    topic TEXT NOT NULL, device TEXT NOT NULL, qos INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (route TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (route TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""
BUSY_TIMEOUT_MS = 10_000
BOUNDS_INTERVAL = 1.0  # seconds between checks of the bounds
# Seconds between exact sums of the payload bytes: a scan of the whole table (about 0.1 s per
# 256 MiB), which delays the commits behind it. In between, the sum grows by what is committed
# and is re-read at once when it passes maxBytes; rows are counted from the ids (both the agent
# and the bounds delete the oldest rows, so the ids left are contiguous).
RECOUNT_INTERVAL = 10.0
DELETE_CHUNK = 500

Row = tuple[float, str, str, int, bytes]
# (ticket committed, last id or None on failure, error or None) -> None, called in the writer thread
CommitCallback = Callable[[int, int | None, BaseException | None], None]


def connect(path: Path) -> sqlite3.Connection:
    """Open the spool (creating it and its schema), WAL and synchronous=FULL."""
    try:
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(SCHEMA)
        db.execute("PRAGMA user_version = 1")
    except sqlite3.Error as exc:
        raise SpoolError(
            f"Cannot open the spool {path}: {exc}. Check the directory is writable and the file "
            "is an SQLite database (move it aside to start an empty spool)."
        ) from None
    return db


class SpoolWriter:
    """The writer thread and the loop-side batch; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        routes: Mapping[str, str],
        max_bytes: int,
        max_age: float,
        on_commit: CommitCallback,
    ) -> None:
        self.path = path
        self.routes = dict(routes)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._on_commit = on_commit
        self._db = connect(path)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[Row] = []
        self._ticket = 1  # the ticket of the batch being filled
        self._stopping = False
        self.rows, self.bytes = self._totals()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._thread.start()

    def configure(self, routes: Mapping[str, str], max_bytes: int, max_age: float) -> None:
        with self._lock:
            self.routes, self.max_bytes, self.max_age = dict(routes), max_bytes, max_age

    def matches(self, topic: str) -> bool:
        return any(filter_matches(f, topic) for f in self.routes.values())

    def add(self, topic: str, device: str, qos: int, payload: bytes) -> int:
        """Queue one row for the next commit; returns the ticket its acknowledgement waits for."""
        with self._lock:
            self._pending.append((time.time(), topic, device, qos, payload))
            if len(self._pending) == 1:
                self._wake.notify()
            return self._ticket

    def stop(self) -> None:
        """Commit what is pending, then end the thread."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self._db.close()

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        next_bounds = 0.0
        next_recount = time.monotonic() + RECOUNT_INTERVAL
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    timeout = next_bounds - time.monotonic()
                    if timeout <= 0:
                        break
                    self._wake.wait(timeout)
                batch, self._pending = self._pending, []
                ticket = self._ticket
                if batch:
                    self._ticket += 1
                stopping = self._stopping
            if batch:
                self._commit(ticket, batch)
            if time.monotonic() >= next_bounds:
                next_bounds = time.monotonic() + BOUNDS_INTERVAL
                recount = time.monotonic() >= next_recount
                if recount:
                    next_recount = time.monotonic() + RECOUNT_INTERVAL
                self._enforce_bounds(recount=recount)
            if stopping and not batch:
                with self._lock:
                    if not self._pending:
                        return

    def _commit(self, ticket: int, batch: list[Row]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO messages (ts, topic, device, qos, payload) VALUES (?, ?, ?, ?, ?)",
                    batch,
                )
                (last,) = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.error("the spool could not commit %d messages: %s", len(batch), exc)
            self._on_commit(ticket, None, exc)
            return
        self.rows += len(batch)
        self.bytes += sum(len(row[4]) for row in batch)
        self._on_commit(ticket, int(last), None)
        if self.bytes > self.max_bytes:
            self._enforce_bounds(recount=True)

    def _totals(self) -> tuple[int, int]:
        rows, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM messages"
        ).fetchone()
        return int(rows), int(size)

    def _rows(self) -> int:
        low, high = self._db.execute("SELECT min(id), max(id) FROM messages").fetchone()
        return 0 if low is None else int(high) - int(low) + 1

    def _enforce_bounds(self, *, recount: bool) -> None:
        try:
            # The agent deletes rows too: re-read what it may have changed.
            if recount or self.bytes > self.max_bytes:
                self.rows, self.bytes = self._totals()
            else:
                self.rows = self._rows()
                if self.rows == 0:
                    self.bytes = 0
            cutoff = time.time() - self.max_age
            while True:
                oldest = self._db.execute("SELECT ts FROM messages ORDER BY id LIMIT 1").fetchone()
                if oldest is None or (self.bytes <= self.max_bytes and oldest[0] >= cutoff):
                    return
                self._delete_oldest(cutoff)
        except sqlite3.Error as exc:
            log.error("the spool's bounds could not be enforced: %s", exc)

    def _delete_oldest(self, cutoff: float) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT id, ts, topic, length(payload) FROM messages ORDER BY id LIMIT ?",
                (DELETE_CHUNK,),
            ).fetchall()
            cursors = dict(db.execute("SELECT route, last_id FROM cursors").fetchall())
            drops: dict[str, int] = {}
            size, count, last_id = self.bytes, 0, 0
            for row_id, ts, topic, length in rows:
                if size <= self.max_bytes and ts >= cutoff:
                    break
                size -= length
                count += 1
                last_id = row_id
                for route, topic_filter in self.routes.items():
                    if cursors.get(route, 0) < row_id and filter_matches(topic_filter, topic):
                        drops[route] = drops.get(route, 0) + 1
            db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
            db.executemany(
                "INSERT INTO drops (route, count) VALUES (?, ?) "
                "ON CONFLICT (route) DO UPDATE SET count = count + excluded.count",
                list(drops.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.rows -= count
        self.bytes = size
        self.dropped += count
        if count:
            log.warning(
                "spool over its bounds: deleted the %d oldest messages (%s)",
                count,
                ", ".join(f"{route}: {n}" for route, n in sorted(drops.items())) or "no route",
            )

"""A throwaway MariaDB server of the test's own, which the test may stop and start at will.

The machine's shared MariaDB (127.0.0.1:3306) serves other tests in parallel and must never be
stopped; this one lives in a temporary directory, on a free loopback port, as the current user:

    with MariaDB.create(tmp_path / "mariadb") as server:     # installed, started
        url = server.url("baetyl")                            # CREATE DATABASE done
        server.stop(signal.SIGKILL)                           # down (a crash)
        server.start()                                        # up again: same data, same port
        server.pause(); server.resume()                       # hung (SIGSTOP), and back

Without ``mariadbd``/``mariadb-install-db`` the test skips, or fails when ``CI=true`` (``.ci/run``
installs mariadb-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pymysql

from tests.support.ci import missing

__all__ = ["MariaDB", "require_mariadb"]

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # crash recovery after a SIGKILL included
STOP_TIMEOUT = 30.0


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def require_mariadb() -> tuple[str, str]:
    """The paths of ``mariadbd`` and ``mariadb-install-db``; skip without them (fail under CI)."""
    server = _find("mariadbd") or _find("mysqld")
    install = _find("mariadb-install-db") or _find("mysql_install_db")
    if server is None or install is None:
        missing(
            "mariadbd and mariadb-install-db are not installed; install them with "
            "'apt-get install mariadb-server' to run the database outage test."
        )
    return server, install


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class MariaDB:
    """A MariaDB server on its own data directory and port; root without a password."""

    def __init__(self, root: Path) -> None:
        self.server, self.install = require_mariadb()
        self.root = root
        self.datadir = root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @classmethod
    def create(cls, root: Path) -> Self:
        """A freshly installed server, not started yet (``with`` starts and finally stops it)."""
        server = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [server.install, "--no-defaults", f"--datadir={server.datadir}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *user],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"mariadb-install-db failed: {done.stdout}{done.stderr}"
        return server

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(signal.SIGTERM)

    # -- running -------------------------------------------------------------------------------

    def start(self) -> float:
        """Start the server on the same data directory and port; seconds until it answered."""
        assert not self.running, "this MariaDB is already running"
        self.starts += 1
        user = ["--user=root"] if os.geteuid() == 0 else []
        log = self.root / f"mariadbd-{self.starts}.log"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [self.server, "--no-defaults", f"--datadir={self.datadir}",
             f"--socket={self.root / 'mariadbd.sock'}", f"--pid-file={self.root / 'mariadbd.pid'}",
             f"--port={self.port}", f"--bind-address={HOST}", "--skip-name-resolve",
             "--innodb-buffer-pool-size=32M", "--max-connections=100", f"--log-error={log}",
             *user],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = started + START_TIMEOUT
        while True:
            try:
                self.connect().close()
                return time.monotonic() - started
            except pymysql.Error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    raise AssertionError(
                        f"MariaDB did not start: {log.read_text(errors='replace')[-2000:]}"
                    ) from None
                time.sleep(0.05)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server with ``how`` (SIGTERM: a clean stop; SIGKILL: a crash); reap it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(how)
        process.send_signal(signal.SIGCONT)  # a paused server takes its signal only when resumed
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): its connections stay open and nothing answers, as with
        a hung host or a network that drops packets."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- using it ------------------------------------------------------------------------------

    def connect(self, database: str | None = None) -> pymysql.Connection[Any]:
        return pymysql.connect(
            host=HOST, port=self.port, user="root", password="", database=database,
            connect_timeout=3, autocommit=True,
        )  # fmt: skip

    def url(self, database: str) -> str:
        """The store URL of ``database`` on this server, created (utf8mb4) if it is not there."""
        conn = self.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8mb4")
        finally:
            conn.close()
        return f"mysql://root:@{HOST}:{self.port}/{database}"

    def execute(
        self, database: str, sql: str, params: tuple[Any, ...] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement in ``database`` (autocommit); its rows."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            conn.close()

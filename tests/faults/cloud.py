"""The cloud under test: ``baetyl up`` as a subprocess that can be SIGKILLed and started again.

The first start takes ephemeral ports; every restart reuses them (same data directory, same
database), so nodes and agents reconnect to where they were, as they would to a real server.
Output goes to files in the work directory (``up-<n>.out``/``.err``): a pipe nobody reads would
stall a chatty server. :class:`Rest` is the management API as a client sees it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.db import Database
from tests.support.up import BAETYL, EPHEMERAL

__all__ = ["Rest", "StoredShadow", "Up", "baetyl_env", "read_shadows"]

_PORT = re.compile(r"^\s+(mqtts|api|activation)\s+127\.0\.0\.1:(\d+)$", re.MULTILINE)


def baetyl_env() -> dict[str, str]:
    """This environment without ``BAETYL_FAULTS_*``: ``baetyl`` reads every ``BAETYL_*`` variable
    as configuration and refuses the keys it does not know."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BAETYL_FAULTS_")}


class Up:
    """``baetyl up`` in ``workdir`` on ``db_url``, with extra ``--set`` arguments."""

    def __init__(self, workdir: Path, db_url: str, *settings: str, log_level: str = "info") -> None:
        self.workdir = workdir
        self.db_url = db_url
        self.settings = settings
        self.log_level = log_level
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def _command(self, *args: str) -> list[str]:
        return [BAETYL, "--log-level", self.log_level,
                "--set", f"database.url={self.db_url}", *self.settings, *args]  # fmt: skip

    def run(self, *args: str) -> str:
        """Run another ``baetyl`` command on the same data directory and database; its stdout."""
        done = subprocess.run(
            self._command(*args), cwd=self.workdir, env=baetyl_env(), capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"baetyl {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    async def start(self) -> dict[str, int]:
        """Start the cloud; wait for it to print its ports (30 s at most)."""
        assert self.proc is None or self.proc.poll() is not None, "the cloud is already running"
        listen = (
            EPHEMERAL
            if not self.ports
            else ["--set", "broker.host=127.0.0.1", "--set", f"broker.port={self.ports['mqtts']}",
                  "--set", f"api.port={self.ports['api']}", "--set",
                  "api.activation_host=127.0.0.1",
                  "--set", f"api.activation_port={self.ports['activation']}"]
        )  # fmt: skip
        self.starts += 1
        out = self.workdir / f"up-{self.starts}.out"
        err = self.workdir / f"up-{self.starts}.err"
        self.proc = await asyncio.to_thread(self._spawn, [*self._command(*listen), "up"], out, err)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = out.read_text(errors="replace")
            if "Press Ctrl-C" in text:
                self.ports = {name: int(port) for name, port in _PORT.findall(text)}
                return self.ports
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        self._kill_now()
        raise AssertionError(f"baetyl up did not start: {err.read_text(errors='replace')[-3000:]}")

    def _spawn(self, argv: list[str], out: Path, err: Path) -> subprocess.Popen[bytes]:
        with out.open("wb") as stdout, err.open("wb") as stderr:
            return subprocess.Popen(
                argv, cwd=self.workdir, env=baetyl_env(), stdout=stdout, stderr=stderr
            )

    async def kill(self) -> None:
        """SIGKILL the cloud, as a crash or an OOM killer would, and reap it."""
        assert self.proc is not None
        assert self.proc.poll() is None, "the cloud is not running"
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait, 30)
        self.kills += 1

    def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL if it takes over 15 s. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self._kill_now()

    def _kill_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def errors(self) -> str:
        """The tracebacks and ERROR lines the cloud logged, over all its runs."""
        found = []
        for index in range(1, self.starts + 1):
            text = (self.workdir / f"up-{index}.err").read_text(errors="replace")
            found += [
                line for line in text.splitlines() if " ERROR " in line or "Traceback" in line
            ]
        return "\n".join(found)


@dataclass
class Rest:
    """The management API with one namespace's token."""

    session: aiohttp.ClientSession
    base: str
    token: str

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, JSON body or None)`` of one request to ``/v1<path>``."""
        async with self.session.request(
            method, f"{self.base}/v1{path}", json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response:  # fmt: skip
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a request that must succeed (2xx)."""
        status, answer = await self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node's view (``report``, ``desire``, ``apps``, labels...), by name."""
        out: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            answer = await self.ok("GET", f"/nodes?pageSize=200&pageNo={page}")
            out.update({item["name"]: item for item in answer["items"]})
            if page * 200 >= answer["total"]:
                return out
            page += 1


@dataclass(frozen=True, slots=True)
class StoredShadow:
    """A shadow's desired and reported sections as committed in the database."""

    desired_version: int
    desired: dict[str, Any]
    reported_version: int
    reported: dict[str, Any]


async def read_shadows(database: Database) -> dict[str, StoredShadow]:
    """Every shadow as committed in the database, read around the cloud (the ground truth)."""
    rows = await asyncio.to_thread(
        database.execute,
        "SELECT node_id, desired_version, desired, reported_version, reported FROM shadows",
    )
    return {
        str(node_id): StoredShadow(int(dv), json.loads(desired), int(rv), json.loads(reported))
        for node_id, dv, desired, rv, reported in rows
    }

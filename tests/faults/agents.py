"""Real edge agents (``baetyl edge run``, native engine) beside the simulated fleet.

Each is a node created through the API and activated with its own install command
(``baetyl edge activate``), then run as a subprocess. Their apps are processes in sessions of
their own that outlive the agent by design: every app the tests give them carries
``BAETYL_FAULTS_MARK=<marker>`` in its environment, and :meth:`Agents.close` ends the processes
carrying it after stopping the agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.faults.cloud import Rest, baetyl_env
from tests.support.processes import marked_processes
from tests.support.up import BAETYL

__all__ = ["MARK", "Agents", "agent_converged"]

MARK = "BAETYL_FAULTS_MARK"


def agent_converged(view: dict[str, Any]) -> bool:
    """The node view shows the agent online, reporting its desired apps (only those) running."""
    desired = sorted((a["name"], a["version"]) for a in view["desire"].get("apps", []))
    report = view["report"]
    reported = sorted((a.get("name"), a.get("version")) for a in report.get("apps", []) or [])
    stats = report.get("appstats", []) or []
    running = sorted(
        (s.get("name"), s.get("version")) for s in stats if s.get("status") == "Running"
    )
    return bool(view["online"]) and desired == reported == running


class Agents:
    """The agents of one test, in ``workdir/agents/<name>``; see the module docstring."""

    def __init__(self, workdir: Path, marker: str) -> None:
        self.root = workdir / "agents"
        self.marker = marker
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0
        self.kills = 0

    async def add(self, rest: Rest, name: str, labels: dict[str, str]) -> None:
        """Create the node and activate it from its install command (not started yet)."""
        await rest.ok("POST", "/nodes", {"name": name, "labels": labels})
        init = await rest.ok("GET", f"/nodes/{name}/init")
        argv = shlex.split(init["cmd"])
        assert argv[:3] == ["baetyl", "edge", "activate"], init["cmd"]
        argv = [a.replace("https://localhost:", "https://127.0.0.1:") for a in argv]
        done = await _run([BAETYL, *argv[1:], "--state-dir", str(self.root / name)])
        assert done.returncode == 0, f"activation of {name} failed: {done.stderr!r}"

    def start(self, name: str) -> None:
        """Run the agent (reports every second, function proxy on a free port)."""
        self.starts += 1
        log = self.root / f"{name}-{self.starts}.log"
        with log.open("wb") as output:
            self.procs[name] = subprocess.Popen(
                [BAETYL, "--log-level", "info", "edge", "run", "--state-dir",
                 str(self.root / name), "--report-interval", "1", "--functions-port", "0"],
                env=baetyl_env(), stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log_tail(self, name: str, lines: int = 12) -> str:
        """The last lines the agent's latest run logged (kept in a failure's message: CI's
        temporary directories do not outlive the run)."""
        logs = sorted(self.root.glob(f"{name}-*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        if not logs:
            return "(no log)"
        text = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()
        return f"{logs[-1].name}: " + " | ".join(text[-lines:])

    def kill(self, name: str) -> None:
        """SIGKILL the agent (its apps keep running, as they should)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    def check_running(self) -> None:
        """Fail if an agent exited on its own."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None and code != -signal.SIGKILL:
                raise AssertionError(f"agent {name} exited with {code}; see {self.root}")

    def close(self) -> None:
        """Stop the agents (SIGTERM, then SIGKILL), then every app process they started."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in marked_processes(f"{MARK}={self.marker}"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(
        subprocess.run, argv, env=baetyl_env(), capture_output=True, timeout=60, check=False
    )

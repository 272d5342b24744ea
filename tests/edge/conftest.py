"""The edge's fixtures: the real cloud (tests/conftest.py) on SQLite, and a real agent.

``agent_dir`` is node gw-1 activated from its install command; ``start_agent`` runs
``baetyl edge run`` on it and stops the agents, and the apps they left, after the test; ``run``
runs a ``baetyl`` command in a thread (``baetyl edge activate``, ``renew``) and captures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.agent import activate_node, stop_left_apps
from tests.support.cli import Cli, capture
from tests.support.cloud import Api, RunningCloud
from tests.support.db import Database, sqlite_database
from tests.support.up import BAETYL


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only: activation from the edge does not depend on the store's backend."""
    return sqlite_database(tmp_path)


@pytest.fixture
async def agent_dir(cloud: RunningCloud, api: Api, tmp_path: Path) -> Path:
    """A node gw-1 activated from its install command into a fresh state directory."""
    state = tmp_path / "edge"
    await activate_node(api, "gw-1", {"site": "x"}, state)
    return state


@pytest.fixture
async def start_agent(agent_dir: Path) -> AsyncIterator[Callable[..., subprocess.Popen[str]]]:
    """Start `baetyl edge run` on the activated node (more options after its own); the agents
    and every app they started are stopped after."""
    running: list[subprocess.Popen[str]] = []

    def start(*options: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [BAETYL, "--log-level", "debug", "edge", "run", "--state-dir", str(agent_dir),
             "--report-interval", "1", "--functions-port", "0", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
        running.append(proc)
        return proc

    yield start
    for proc in running:  # waited for in a thread: the cloud, in this loop, must keep answering
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.communicate, timeout=10)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.communicate)
    await stop_left_apps(agent_dir)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``baetyl ARGV...`` in a thread and capture what it printed."""
    return capture(capsys)

"""The native engine runs the node broker's system app like any app: started, kept running.

The broker itself is another branch's (``python -m broker.node``); here the interpreter is a
stand-in script that records its command line and stays up, so what is tested is the agent's
side: the command the engine runs, and that a broker that dies is started again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.dataplane.nodebroker import BROKER_APP, NodeBrokerFiles, NodeBrokerSettings, system_app
from edge.engines import InstanceState
from edge.engines.native import NativeEngine
from tests.edge.test_native_engine import FAST
from tests.support.polling import until
from tests.support.processes import alive


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[NativeEngine]:
    async with NativeEngine(tmp_path / "native", **FAST) as engine:
        try:
            yield engine
        finally:
            await engine.stop_all()


async def test_the_engine_runs_the_broker_module_and_restarts_it(
    engine: NativeEngine, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec sleep 60\n')
    python.chmod(0o755)
    files = NodeBrokerFiles(tmp_path / "state")
    app = system_app(files, NodeBrokerSettings(python=str(python)), engine="native")
    await engine.apply([app])

    def running() -> int | None:
        (status,) = engine.status()
        (instance,) = status.instances
        return instance.pid if instance.state is InstanceState.RUNNING else None

    first = await until(running, what="the broker to run")
    await until(calls.exists, what="the broker's command line")
    assert calls.read_text().split("\n")[0] == f"-m broker.node --config {files.config.absolute()}"
    (status,) = engine.status()
    assert status.name == BROKER_APP
    os.kill(first, signal.SIGKILL)
    second = await until(lambda: (pid := running()) != first and pid, what="a restart")
    assert alive(second)
    assert len(calls.read_text().splitlines()) == 2

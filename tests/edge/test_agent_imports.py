"""The agent at rest holds only what it runs (the agent's memory on small devices).

``baetyl edge run`` on the native engine, against the whole cloud, with Python reporting every
import (``PYTHONPROFILEIMPORTTIME``): once the node is online and the agent has made its first
renewal check, it has loaded no server code and no Kubernetes client (ever; of ``management``
only the command's parser, ``management.cli``), and neither aiohttp (the function proxy loads it
at the first call) nor cryptography (renewal loads it when due).
Its resident memory is measured by ``bench/cli.py``, not here.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
from pathlib import Path

from tests.support.agent import node_online
from tests.support.cloud import Api
from tests.support.polling import until
from tests.support.up import BAETYL

NEVER = {"kubernetes", "amqtt", "tortoise", "aiomysql", "aiosqlite", "broker", "certs"}
NOT_AT_REST = {"aiohttp", "cryptography", "jsonschema", "yaml"}
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


async def test_native_agent_at_rest_loads_no_server_kubernetes_aiohttp_or_cryptography(
    api: Api,
    agent_dir: Path,
    tmp_path: Path,
) -> None:
    """Online and past its first renewal check, the agent has imported only the node side."""
    log = tmp_path / "agent.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(  # noqa: ASYNC220 # returns at once; it is stopped below
            [BAETYL, "edge", "run", "--state-dir", str(agent_dir), "--report-interval", "1",
             "--functions-port", "0"],
            stdout=subprocess.DEVNULL, stderr=output,
            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        )  # fmt: skip
    try:
        await until(functools.partial(node_online, api), what="the node to be online")
        await asyncio.sleep(2)  # two report intervals: the first renewal check has run
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
    modules = set(IMPORTED.findall(log.read_text()))
    assert {"edge.agent", "edge.engines.native", "paho.mqtt.client"} <= modules  # read right
    assert sorted(m for m in modules if m.split(".")[0] in NEVER) == []
    assert sorted(m for m in modules if m.split(".")[0] in NOT_AT_REST) == []
    assert not any(m.startswith("shadow.server") for m in modules)
    # The 'baetyl' command's parser lives in management.cli; nothing else of management loads.
    cloud = [m for m in modules if m.split(".")[0] == "management" and m != "management"]
    assert [m for m in cloud if not m.startswith("management.cli")] == []

"""``baetyl`` imports per command: its help and the API client load none of the cloud.

Each command runs in a fresh interpreter (``python -c``) that prints, after the command, the
top-level packages it has imported. What each command may not load is what was measured
as slow start-up: the broker (amqtt), the ORM (tortoise), the Kubernetes client, the server
stack, and the libraries only some commands need (cryptography, aiohttp, jsonschema, PyYAML).
How fast that makes them is measured by ``bench/cli.py``, not here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.cloud import Api
from tests.support.db import Database

# Never for 'baetyl --help' or an API command.
SERVER = {"amqtt", "tortoise", "aiomysql", "aiosqlite", "kubernetes", "broker", "certs"}
HEAVY = {"cryptography", "aiohttp", "jsonschema", "referencing", "yaml", "psutil", "paho"}
SERVER_MODULES = ("shadow.server", "management.cloud", "management.api.app", "management.store")

RUN = """
import sys
from management.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = sorted(sys.modules)
print("MODULES " + " ".join(loaded), file=sys.stderr)
sys.exit(code)
"""


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, set[str]]:
    """Run ``baetyl ARGV`` in a fresh interpreter: exit code, stdout, modules it imported."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN, *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = err.decode().splitlines()
    marked = [line for line in lines if line.startswith("MODULES ")]
    assert marked, err.decode()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), set(marked[-1].split()[1:])


def offenders(modules: set[str], forbidden: set[str]) -> list[str]:
    return sorted(
        m for m in modules if m.split(".")[0] in forbidden or m.startswith(SERVER_MODULES)
    )


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only: what the client imports does not depend on the cloud's store."""
    path = tmp_path / "baetyl.db"
    return Database("sqlite", f"sqlite://{path}", path=path)


async def test_help_loads_no_cloud_and_no_heavy_library() -> None:
    """``baetyl --help`` lists every command from the standard library alone."""
    code, out, modules = await run("--help")
    assert code == 0
    assert "tokens" in out
    assert "edge" in out
    assert offenders(modules, SERVER | HEAVY | {"asyncio", "ssl"}) == []
    assert "management.cli.client" in modules  # the check saw the commands' modules


async def test_api_command_loads_no_cloud(api: Api, tmp_path: Path) -> None:
    """``baetyl node list`` against a running cloud prints its table, loading no server code."""
    status, _ = await api.call("POST", "/nodes", {"name": "edge-01"})
    assert status == 201
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    code, out, modules = await run("node", "list", "--api-url", api.base, "--token", api.token,
                                   env=env)  # fmt: skip
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["edge-01", "no"]
    assert offenders(modules, SERVER | HEAVY) == []
    assert "urllib.request" in modules  # it did talk to the API

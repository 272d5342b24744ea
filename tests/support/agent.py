"""The edge agent as the end-to-end tests run it: a node's install command and its activation,
whether its stored certificate connects, the app the tests deploy, what that app leaves to look
at, and a relay that partitions the agent from the broker.

The fixtures that use these (``agent_dir``, ``start_agent``) are in tests/edge/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from edge import TokenCredentials, activate
from edge.engines.native import NativeEngine
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds
from tests.support.cloud import Api, RunningCloud

# The app: reads its config file, writes what it read (and its pid) to OUT, then stays up.
APP = (
    "import os, pathlib, time\n"
    "text = (pathlib.Path(os.environ['BAETYL_VOLUME_SITE']) / 'msg.txt').read_text()\n"
    "pathlib.Path(os.environ['OUT']).write_text(f'{os.getpid()} {text}')\n"
    "while True: time.sleep(1)\n"
)


async def node_online(api: Api, name: str = "gw-1") -> bool:
    """Whether the API shows the node online."""
    return bool((await api.call("GET", f"/nodes/{name}"))[1]["online"])


async def app_wrote(out: Path, text: str) -> int | None:
    """The pid of the app that wrote ``text`` to ``out`` (as ``<pid> <text>``), else None."""
    pid, _, content = written(out).partition(" ")
    return int(pid) if content == text else None


def written(path: Path) -> str:
    """What an app wrote to ``path`` so far ("" before it exists: it may be empty a moment)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def activate_node(api: Api, name: str, labels: dict[str, str], state: Path) -> None:
    """Create node ``name`` and activate it into ``state`` from its install command."""
    assert (await api.call("POST", "/nodes", {"name": name, "labels": labels}))[0] == 201
    status, init = await api.call("GET", f"/nodes/{name}/init")
    assert status == 200
    argv = shlex.split(init["cmd"])
    options = dict(zip(argv[3::2], argv[4::2], strict=True))
    await asyncio.to_thread(
        activate,
        options["--url"].replace("localhost", "127.0.0.1"),
        options["--ca-sha256"],
        TokenCredentials(options["--token"]),
        state,
    )


async def stop_left_apps(state_dir: Path) -> None:
    """Stop the native apps the agents of ``state_dir`` left running: they outlive their agent
    by design. An engine adopts them from their ``state.json`` and stops them, as the next agent
    would on the app's deletion."""
    async with NativeEngine(state_dir / "native", stop_timeout=2.0) as engine:
        await engine.stop_all()


async def post_site_app(api: Api, out: Path) -> dict[str, Any]:
    """Post config ``site`` (msg.txt ``one``) and the native app ``web`` that writes it to
    ``out``; the config's body, to change it with."""
    config = {"name": "site", "data": {"msg.txt": "one"}}
    assert (await api.call("POST", "/configs", config))[0] == 201
    app = {
        "name": "web",
        "type": "native",
        "selector": "site=x",
        "services": [
            {
                "name": "web",
                "command": [sys.executable, "-c", APP],
                "env": [{"name": "OUT", "value": str(out)}],
            }
        ],
        "volumes": [{"name": "site", "config": {"name": "site"}}],
    }
    assert (await api.call("POST", "/apps", app))[0] == 201
    return config


class Partition:
    """A TCP relay between the agent and the broker that can cut the network and restore it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.frozen = False  # connections stay open but carry nothing (a cloud gone silent)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)
                        await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            for each in (writer, up_writer):
                each.transport.abort()
                self._writers.discard(each)


def point_agent_at(agent_dir: Path, port: int) -> None:
    """Make the activated node use ``port`` for the broker (the partition's relay)."""
    path = agent_dir / "node.json"
    info = json.loads(path.read_text())
    info["broker"]["port"] = port
    path.write_text(json.dumps(info))


async def install_command(api: Api, name: str, *, create: bool = True) -> list[str]:
    """Node ``name``'s install command (node made first if ``create``) without 'baetyl'."""
    if create:
        status, body = await api.call("POST", "/nodes", {"name": name})
        assert status == 201, body
    status, body = await api.call("GET", f"/nodes/{name}/init")
    assert status == 200, body
    argv = shlex.split(body["cmd"])
    assert argv[:3] == ["baetyl", "edge", "activate"]
    return argv[1:]


def snapshot(state: Path) -> dict[str, bytes]:
    """Every file of the state directory and its bytes."""
    return {path.name: path.read_bytes() for path in sorted(state.iterdir())}


async def connects(cloud: RunningCloud, state: Path, node_id: str) -> bool:
    """Whether a paho client connects to the broker as ``node_id`` with the stored files."""
    certificate = x509.load_pem_x509_certificate((state / "node.crt").read_bytes())
    creds = Creds(node_id, state / "node.crt", state / "node.key", certificate.serial_number)
    client = MqttClient(cloud.mqtt_port, node_id, ca=state / "ca.crt", creds=creds)
    try:
        return await asyncio.to_thread(client.try_connect) == (0, False)
    finally:
        await asyncio.to_thread(client.close)

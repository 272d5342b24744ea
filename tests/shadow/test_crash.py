"""The cloud killed with SIGKILL mid-stream loses no report it accepted (SQLite and MariaDB)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from certs import CertificateAuthority
from shadow.server import Database as Db
from shadow.server import ShadowRecord, SqlShadowStore
from tests.broker.clients import MqttClient
from tests.broker.helpers import issue_node
from tests.support.db import Database
from tests.support.up import BAETYL, start_up

NODE = "default.crash-1"
PREFIX = f"$baetyl/node/{NODE}/"
REPORTS = 400


@pytest.fixture
def db_url(database: Database) -> str:
    """A fresh SQLite file or MariaDB database (see conftest.py)."""
    return database.url


def start_cloud(cwd: Path, db_url: str) -> tuple[subprocess.Popen[str], int]:
    """``baetyl up`` on the given store, its node rate limit out of the way; its MQTT port."""
    return start_up(
        cwd,
        "--set", f"database.url={db_url}",
        "--set", "shadow.report_rate=100000", "--set", "shadow.report_burst=100000",
    )  # fmt: skip


def stored(db_url: str) -> ShadowRecord | None:
    async def load() -> ShadowRecord | None:
        async with Db.open(db_url) as db:
            return (await SqlShadowStore(db).load([NODE])).get(NODE)

    return asyncio.run(load())


def test_sigkill_after_accepting_loses_nothing_accepted(tmp_path: Path, db_url: str) -> None:
    """Every report answered 'accepted' before a SIGKILL is in the store after it."""
    init = subprocess.run(
        [BAETYL, "certs", "init"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert init.returncode == 0, init.stderr
    ca = CertificateAuthority.load(tmp_path / "baetyl-data" / "ca")
    creds = issue_node(ca, tmp_path / "node", "default", "crash-1")

    proc, port = start_cloud(tmp_path, db_url)
    accepted: list[int] = []
    enough = threading.Event()
    client = MqttClient(port, NODE, ca=ca.ca_path, creds=creds)
    try:
        client.connect()
        client.subscribe(PREFIX + "report/accepted", qos=1)

        def collect() -> None:
            while not enough.is_set():
                try:
                    message = client.messages.get(timeout=0.05)
                except Exception:  # noqa: S112 # queue.Empty: keep polling until killed
                    continue
                accepted.append(int(json.loads(message.payload)["clientToken"]))
                if len(accepted) >= REPORTS // 4:
                    proc.send_signal(signal.SIGKILL)  # while the rest is still in flight
                    enough.set()

        collector = threading.Thread(target=collect)
        collector.start()
        for index in range(REPORTS):
            payload = {"clientToken": str(index), "reported": {f"r{index}": index}}
            client.client.publish(PREFIX + "report", json.dumps(payload).encode(), qos=1)
        enough.wait(30)
        collector.join(5)
        assert enough.is_set(), f"only {len(accepted)} reports were accepted"
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)

    record = stored(db_url)
    assert record is not None
    state = record.reported.state
    missing = [index for index in accepted if state.get(f"r{index}") != index]
    assert missing == [], f"accepted but lost after SIGKILL: {missing[:10]}"
    assert record.reported.version >= len(accepted)

    # The cloud starts again on the same store and carries on from the stored version.
    proc, port = start_cloud(tmp_path, db_url)
    client = MqttClient(port, NODE, ca=ca.ca_path, creds=creds)
    try:
        client.connect()
        client.subscribe(PREFIX + "report/accepted", qos=1)
        body: dict[str, object] = {
            "clientToken": "after",
            "version": record.reported.version,
            "reported": {},
        }
        client.publish(PREFIX + "report", json.dumps(body).encode(), qos=1)
        answer = json.loads(client.receive_on(PREFIX + "report/accepted").payload)
        assert answer["clientToken"] == "after"
        assert answer["version"] == record.reported.version + 1
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err

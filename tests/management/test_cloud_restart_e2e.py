"""`baetyl up` stopped and started again: what a consumer's persistent session keeps.

Real processes and clients: the cloud is `baetyl up` on its data directory, the consumer an
operator's paho client with a persistent session (clean session 0) on every node's uplink at
QoS 1, the node a paho client publishing to its own ``up/...``. PROTOCOL.md, "Delivery
guarantees of the cloud broker", says what this checks: a graceful restart (SIGTERM) keeps the
session, its subscription and every queued message; a SIGKILL loses the messages held for it
since the last graceful start or stop, and nothing else of it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs import CertificateAuthority, write_private_file, write_public_file
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds, issue_node
from tests.support.tools import require_tool
from tests.support.up import BAETYL, start_up

NODE = "default.n1"
UPLINK = "$baetyl/node/+/up/#"
OPERATOR = "operator:ops"
SENT = 500


def uplink(index: int) -> str:
    return f"$baetyl/node/{NODE}/up/telemetry/{index}"


class Cloud:
    """One `baetyl up` process at a time on the same data directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> int:
        self.proc, self.port = start_up(self.cwd)
        return self.port

    def stop(self, sig: signal.Signals) -> str:
        """Signal the process, wait for it; its stderr."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        _out, err = self.proc.communicate(timeout=30)
        expected = 0 if sig is signal.SIGTERM else -signal.SIGKILL
        assert self.proc.returncode == expected, err
        self.proc = None
        return err

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    init = subprocess.run([BAETYL, "certs", "init"], cwd=tmp_path, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    running = Cloud(tmp_path)
    try:
        yield running
    finally:
        running.close()


def operator_creds(ca: CertificateAuthority, directory: Path) -> Creds:
    issued = ca.issue_operator("ops")
    assert issued.private_key_pem is not None
    directory.mkdir()
    write_public_file(directory / "ops.crt", issued.chain_pem)
    write_private_file(directory / "ops.key", issued.private_key_pem)
    return Creds(OPERATOR, directory / "ops.crt", directory / "ops.key", 0)


def test_graceful_restart_keeps_the_queue_and_sigkill_loses_only_what_was_held(
    tmp_path: Path, cloud: Cloud
) -> None:
    ca = CertificateAuthority.load(tmp_path / "baetyl-data" / "ca")
    node_creds = issue_node(ca, tmp_path / "node", "default", "n1")
    ops = operator_creds(ca, tmp_path / "ops")
    clients: list[MqttClient] = []

    def client(creds: Creds, client_id: str | None = None, *, persistent: bool) -> MqttClient:
        made = MqttClient(
            cloud.port, client_id or creds.client_id, ca=ca.ca_path, creds=creds,
            clean_session=not persistent,
        )  # fmt: skip
        clients.append(made)
        return made

    def publish(first: int, count: int) -> None:
        node = client(node_creds, persistent=False)
        node.connect()
        for index in range(first, first + count):
            node.publish(uplink(index), str(index).encode(), qos=1)  # returns on the PUBACK
        node.close()

    try:
        # The consumer subscribes once, then goes away; the node publishes meanwhile.
        cloud.start()
        consumer = client(ops, persistent=True)
        assert consumer.connect() is False
        assert consumer.subscribe(UPLINK, 1) == [1]
        consumer.close()
        publish(0, SENT)
        err = cloud.stop(signal.SIGTERM)
        assert "saved 1 persistent sessions" in err, err
        sessions = tmp_path / "baetyl-data" / "broker" / "sessions.msgpack"
        assert sessions.stat().st_mode & 0o777 == 0o600

        # A graceful restart: the session is back, every message comes in order, and the
        # subscription is live without subscribing again.
        cloud.start()
        consumer = client(ops, persistent=True)
        assert consumer.connect() is True
        got = [consumer.receive(timeout=10) for _ in range(SENT)]
        assert [(m.topic, m.payload) for m in got] == [
            (uplink(i), str(i).encode()) for i in range(SENT)
        ]
        assert consumer.drain() == []
        consumer.close()

        # A session made after that start is not on disk yet.
        late = client(ops, f"{OPERATOR}/late", persistent=True)
        assert late.connect() is False
        assert late.subscribe(UPLINK, 1) == [1]
        late.close()

        # While the consumer is away, the cloud acknowledges 50 more to the node, then dies.
        publish(SENT, 50)
        cloud.stop(signal.SIGKILL)

        # After the SIGKILL: the consumer's session and subscription (as of the last start) are
        # there; the 50 held for it are lost, and nothing delivered before comes again. The
        # session made since that start is gone.
        cloud.start()
        late = client(ops, f"{OPERATOR}/late", persistent=True)
        assert late.connect() is False
        consumer = client(ops, persistent=True)
        assert consumer.connect() is True
        publish(SENT + 50, 1)
        message = consumer.receive(timeout=10)
        assert (message.topic, message.payload) == (uplink(SENT + 50), str(SENT + 50).encode())
        assert consumer.drain() == []
        assert late.drain() == []
        consumer.close()
        late.close()

        # PROTOCOL.md's mosquitto_sub command reads the uplink with the operator's certificate.
        watcher = subprocess.Popen(
            [require_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(cloud.port),
             "--cafile", str(ca.ca_path), "--cert", str(ops.cert), "--key", str(ops.key),
             "-i", f"{OPERATOR}/sub", "-c", "-q", "1", "-t", UPLINK, "-v", "-C", "1", "-W", "20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(1.0)  # mosquitto_sub has subscribed
            publish(SENT + 51, 1)
            out, err = watcher.communicate(timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate()
        assert watcher.returncode == 0, err
        assert out.strip() == f"{uplink(SENT + 51)} {SENT + 51}"
        cloud.stop(signal.SIGTERM)
    finally:
        for made in clients:
            made.close()

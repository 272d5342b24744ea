"""QoS 1 throughput into the node broker's spool, for one and for several publishing clients.

    .venv/bin/python -m bench.node_spool --clients 1 --messages 20000
    .venv/bin/python -m bench.node_spool --clients 10 --messages 5000

Starts ``python -m broker.node`` on free loopback ports with a device CA and a server certificate
made in a temporary directory, one password device per client (each connects over TLS,
verifying the server), and a spool route matching what they publish. Each client is a paho
client (MQTT 3.1.1, ``max_inflight_messages`` ``--inflight``) publishing ``--messages`` QoS 1
messages of ``--size`` bytes as fast as its window allows; every PUBACK means the message was
committed to SQLite (WAL, synchronous=FULL). Prints msg/s from the first publish to the last
PUBACK, and checks the spool holds every message.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import os
import re
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from certs import CertificateAuthority, write_private_file, write_public_file

PASSWORD = "bench-password"  # noqa: S105 - the benchmark's throwaway devices
SALT = b"bench-salt-16byt"


def _hash(password: str) -> str:
    digest = hashlib.scrypt(password.encode(), salt=SALT, n=16384, r=8, p=1, dklen=32)
    salt, value = base64.b64encode(SALT).decode(), base64.b64encode(digest).decode()
    return f"scrypt$16384$8$1${salt}${value}"


def _start(root: Path, clients: int) -> tuple[subprocess.Popen[str], int]:
    cloud = CertificateAuthority.init(root / "ca")
    devices = CertificateAuthority.init(root / "device-ca", common_name="pybaetyl device CA")
    server = devices.issue_server(
        "broker.bench.node",
        dns_names=["localhost"],
        ip_addresses=[ipaddress.ip_address("127.0.0.1")],
    )
    assert server.private_key_pem is not None
    write_private_file(root / "server.key", server.private_key_pem)
    write_public_file(root / "server.crt", server.chain_pem)
    password_hash = _hash(PASSWORD)
    config = {
        "node": "bench.node",
        "listen": {"host": "127.0.0.1", "port": 0},
        "local": None,
        "tls": {
            "cert": "server.crt",
            "key": "server.key",
            "deviceCa": str(devices.ca_path),
            "cloudCa": str(cloud.ca_path),
        },
        "devices": [
            {
                "name": f"dev-{i}",
                "publish": ["devices/{}/#".format(f"dev-{i}")],
                "subscribe": [],
                "passwordHash": password_hash,
                "certificates": [],
            }
            for i in range(clients)
        ],
        "spool": {
            "path": "spool.db",
            "routes": {"up": "devices/+/telemetry"},
            "maxBytes": 1 << 30,
            "maxAgeSeconds": 86400,
        },
        "status": "status.json",
        "maxQueuedPerSession": 1000,
    }
    (root / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.node",
            "--config",
            str(root / "config.json"),
            "--log-level",
            "WARNING",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    # WARNING hides the "listening" line: find the port from the process's sockets instead.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        port = _listening_port(process.pid)
        if port:
            return process, port
        if process.poll() is not None:
            raise SystemExit(
                f"the node broker exited: {process.stderr.read() if process.stderr else ''}"
            )
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the node broker did not start listening")


def _listening_port(pid: int) -> int | None:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(found[1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            return int(fields[1].split(":")[1], 16)
    return None


class Publisher(threading.Thread):
    def __init__(self, port: int, name: str, ca: Path, messages: int, size: int, inflight: int):
        super().__init__(daemon=True)
        self.messages, self.payload = messages, b"x" * size
        self.acked = 0
        self.done = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311
        )
        self.client.username_pw_set(name, PASSWORD)
        context = ssl.create_default_context(cafile=str(ca))
        self.client.tls_set_context(context)
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.topic = f"devices/{name}/telemetry"

    def _on_publish(self, *_args: object) -> None:
        self.acked += 1
        if self.acked == self.messages:
            self.done.set()

    def run(self) -> None:
        self.client.loop_start()
        for _ in range(self.messages):
            self.client.publish(self.topic, self.payload, qos=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--messages", type=int, default=10000, help="per client")
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--inflight", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="node-spool-") as directory:
        root = Path(directory)
        process, port = _start(root, args.clients)
        publishers: list[Publisher] = []
        try:
            publishers = [
                Publisher(
                    port,
                    f"dev-{i}",
                    root / "device-ca" / "ca.crt",
                    args.messages,
                    args.size,
                    args.inflight,
                )
                for i in range(args.clients)
            ]
            start = time.perf_counter()
            for publisher in publishers:
                publisher.start()
            for publisher in publishers:
                if not publisher.done.wait(600):
                    raise SystemExit(f"{publisher.topic}: {publisher.acked} acknowledged in 600 s")
            elapsed = time.perf_counter() - start
        finally:
            for publisher in publishers:
                publisher.client.disconnect()
                publisher.client.loop_stop()
            process.terminate()
            process.wait(30)
        total = args.clients * args.messages
        with sqlite3.connect(root / "spool.db") as db:
            (rows,) = db.execute("SELECT count(*) FROM messages").fetchone()
        print(
            f"clients={args.clients} messages={total} size={args.size} inflight={args.inflight}: "
            f"{total / elapsed:,.0f} msg/s ({elapsed:.2f} s), {rows} rows in the spool"
        )
        if rows != total:
            raise SystemExit(f"the spool holds {rows} rows, {total} were acknowledged")


if __name__ == "__main__":
    main()

"""Start, watch and stop the brokers under test: ours (`baetyl broker run`) and Mosquitto."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import mqtt
from bench.loadgen import raise_nofile
from bench.pki import FleetPKI

__all__ = [
    "BROKERS",
    "CLK_TCK",
    "RunningBroker",
    "check_mtls",
    "cpu_seconds",
    "free_port",
    "listen_overflows",
    "machine_ticks",
    "mosquitto_version",
    "rss_kib",
    "start_broker",
]

BROKERS = ("ours", "mosquitto")
MOSQUITTO = "/usr/sbin/mosquitto"
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Nodes may use their own topics only (PROTOCOL.md); the service may use every $baetyl topic.
MOSQUITTO_ACL = """\
pattern read $baetyl/node/%u/desire
pattern read $baetyl/node/%u/delta
pattern read $baetyl/node/%u/resource
pattern read $baetyl/node/%u/report/accepted
pattern read $baetyl/node/%u/report/rejected
pattern write $baetyl/node/%u/report
pattern write $baetyl/node/%u/desire/get
pattern write $baetyl/node/%u/resource/get

user {service}
topic readwrite $baetyl/#
"""


def free_port() -> int:
    """A free loopback TCP port (never one of the well-known ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in (1883, 3306, 8883):
            return port


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def listen_overflows() -> int:
    """System-wide count of connections dropped because a listen queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def mosquitto_version() -> str:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
    except OSError:
        return "not installed"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else "unknown"


@dataclass
class RunningBroker:
    """A broker process started by the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_listening(broker: RunningBroker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not broker.alive():
            raise RuntimeError(f"{broker.name} exited at start:\n{broker.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    broker.stop()
    raise RuntimeError(f"{broker.name} did not listen on {broker.port} in {timeout} s")


def _mosquitto_conf(pki: FleetPKI, workdir: Path, port: int) -> Path:
    acl = workdir / "mosquitto.acl"
    acl.write_text(MOSQUITTO_ACL.format(service=pki.service_client_id))
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        f"acl_file {acl}",
        f"listener {port} 127.0.0.1",
        "max_connections -1",
        # Ours queues without bound for a slow subscriber; Mosquitto's defaults (20 in flight,
        # 1,000 queued, the rest dropped) would make the service's fan-in figure a limit, not a
        # measure of routing. Unlimited on both sides.
        "max_inflight_messages 0",
        "max_queued_messages 0",
        f"cafile {pki.ca_file}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        f"crlfile {pki.crl_file}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if os.geteuid() == 0:
        # Run as root, Mosquitto drops to the "mosquitto" user and can no longer read the keys.
        lines.insert(0, f"user {pwd.getpwuid(0).pw_name}")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def start_broker(
    name: str, pki: FleetPKI, workdir: Path, settings: tuple[str, ...] = ()
) -> RunningBroker:
    """Start broker `name` ("ours" or "mosquitto") on a free loopback port; wait for it.

    ``settings`` are extra ``KEY=VALUE`` settings of ours (``--set``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"{name}.log"
    if name == "ours":
        command = [
            str(VENV_BIN / "baetyl"),
            "--data-dir",
            str(pki.root),
            "--set",
            "broker.host=127.0.0.1",
            "--set",
            f"broker.port={port}",
            "--set",
            "broker.max_connections=19000",
            *(arg for setting in settings for arg in ("--set", setting)),
            "--log-level",
            "warning",
            "broker",
            "run",
        ]
    elif name == "mosquitto":
        command = [MOSQUITTO, "-c", str(_mosquitto_conf(pki, workdir, port))]
    else:
        raise ValueError(f"unknown broker {name!r}; choose from {', '.join(BROKERS)}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_nofile,  # only setrlimit; no threads in this process yet
        )
    broker = RunningBroker(name, process, port, log_path)
    _wait_listening(broker, timeout=60)
    return broker


async def check_mtls(pki: FleetPKI, port: int) -> str:
    """Sanity: a TLS client without a certificate must not get a CONNACK; a node with one must."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca_file)
    anonymous = await _try_connect(ctx, port, "bench.n0")
    ctx_node = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx_node.load_verify_locations(cafile=pki.ca_file)
    ctx_node.load_cert_chain(pki.node_file(0))
    with_cert = await _try_connect(ctx_node, port, "bench.n0")
    ok = anonymous != "CONNACK 0" and with_cert == "CONNACK 0"
    verdict = "OK" if ok else "FAILED"
    return f"mTLS {verdict}: without a certificate -> {anonymous}; node cert -> {with_cert}"


async def _try_connect(ctx: ssl.SSLContext, port: int, client_id: str) -> str:
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            try:
                writer.write(mqtt.connect(client_id))
                await writer.drain()
                header = await reader.readexactly(4)
            finally:
                writer.close()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
        return f"refused ({type(exc).__name__})"
    if header[0] >> 4 != mqtt.CONNACK:
        return f"unexpected packet {header[0]:#x}"
    return f"CONNACK {header[3]}"

"""``baetyl up`` as a subprocess on loopback and ephemeral ports, for end-to-end tests."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BAETYL", "EPHEMERAL", "start_up", "start_up_ports"]

BAETYL = str(Path(sys.executable).with_name("baetyl"))
# Every listener of `baetyl up` on loopback and an ephemeral port.
EPHEMERAL = [
    "--set", "broker.host=127.0.0.1", "--set", "broker.port=0",
    "--set", "api.port=0", "--set", "api.activation_host=127.0.0.1",
    "--set", "api.activation_port=0",
]  # fmt: skip


def start_up(cwd: Path, *settings: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``baetyl up`` with extra ``--set`` arguments; the process and its MQTT port.

    The caller stops the process (SIGTERM, then read its output); if it does not print its
    port within 30 s it is killed and the test fails with its stderr.
    """
    proc, ports = start_up_ports(cwd, *settings)
    return proc, ports["mqtts"]


def start_up_ports(cwd: Path, *settings: str) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Like ``start_up``, returning every listener's port it prints (``api``, ``mqtts``, ...)."""
    proc = subprocess.Popen(
        [BAETYL, *EPHEMERAL, *settings, "up"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"^\s+(\w+)\s+[\d.]+:(\d+)$", line)
        if found:
            ports[found.group(1)] = int(found.group(2))
        if "mqtts" in ports:  # printed last, in sorted order
            return proc, ports
    proc.kill()
    _out, err = proc.communicate(timeout=10)
    raise AssertionError(f"baetyl up did not start: {err}")

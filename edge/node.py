"""What the node reports about itself: ``node`` (who and what it is) and ``nodestats`` (load).

Both are plain JSON objects of a fixed shape (the same keys every time, so a report of a
changed value stays small): strings in :func:`node_info`, finite numbers and booleans in
:func:`node_stats`, floats rounded to two decimals. Nothing here blocks: the files read are tiny
kernel or config files, and CPU usage is measured since the previous call, not over a sleep.
"""

from __future__ import annotations

import logging
import math
import platform
import shlex
import socket
from importlib import metadata
from pathlib import Path
from typing import TypedDict

import psutil

__all__ = [
    "DISK_PRESSURE_PERCENT",
    "MEMORY_PRESSURE_PERCENT",
    "NodeInfo",
    "NodeStats",
    "node_info",
    "node_stats",
]

log = logging.getLogger(__name__)

MEMORY_PRESSURE_PERCENT = 90.0
"""Memory use at or above this percentage sets ``pressure.memory``."""
DISK_PRESSURE_PERCENT = 90.0
"""Root filesystem use at or above this percentage sets ``pressure.disk``."""

# Kubernetes / Go names for the machine types, so the cloud can choose images by architecture.
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
# An address in TEST-NET-1 (RFC 5737): connecting a UDP socket to it sends nothing, it only
# asks the kernel which local address the default route would use.
_PROBE_ADDRESS = ("192.0.2.1", 9)


class NodeInfo(TypedDict):
    """The ``node`` section of the reported state."""

    hostname: str
    address: str
    arch: str
    kernelVersion: str
    os: str
    osImage: str
    machineID: str
    bootID: str
    systemUUID: str
    agentVersion: str


class CPUStats(TypedDict):
    """CPU use over all cores since the previous sample, and the number of logical cores."""

    percent: float
    count: int


class UsageStats(TypedDict):
    """Capacity and use of memory or of the root filesystem, in bytes and percent."""

    total: int
    used: int
    percent: float


class NetStats(TypedDict):
    """Bytes sent and received over all interfaces since boot."""

    bytesSent: int
    bytesRecv: int


class LoadStats(TypedDict):
    """The 1, 5 and 15 minute load averages."""

    load1: float
    load5: float
    load15: float


class PressureStats(TypedDict):
    """Whether memory or the root filesystem is nearly full."""

    memory: bool
    disk: bool


class NodeStats(TypedDict):
    """The ``nodestats`` section of the reported state."""

    cpu: CPUStats
    memory: UsageStats
    disk: UsageStats
    net: NetStats
    load: LoadStats
    pressure: PressureStats
    ready: bool


def _read(path: Path) -> str:
    """The stripped text of a small file, or ``""`` when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _os_image(root: Path) -> str:
    """``PRETTY_NAME`` from os-release (shell-quoted, per its specification), or ``""``."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        text = _read(root / name)
        if not text:
            continue
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key == "PRETTY_NAME":
                try:
                    return " ".join(shlex.split(value))
                except ValueError:  # unbalanced quotes: report the value as written
                    return value.strip("\"'")
        return ""
    return ""


def _address() -> str:
    """The node's primary IPv4 address: the one its default route uses, else any non-loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_PROBE_ADDRESS)
            address = str(probe.getsockname()[0])
        if address and not address.startswith(("0.", "127.")):
            return address
    except OSError:
        pass
    try:
        interfaces = psutil.net_if_addrs()
    except OSError:
        return ""
    for addresses in interfaces.values():
        for item in addresses:
            if item.family == socket.AF_INET and not item.address.startswith("127."):
                return str(item.address)
    return ""


def _agent_version() -> str:
    try:
        return metadata.version("pybaetyl")
    except metadata.PackageNotFoundError:
        return "unknown"


def node_info(*, root: Path = Path("/")) -> NodeInfo:
    """Who and what this node is; a value that cannot be read is ``""``.

    ``root`` is where the filesystem is mounted (``/``; an agent in a container may see the
    host's under another path). Nothing here changes until a reboot or an upgrade, so an agent
    reports it at start and in its periodic full reports.
    """
    return NodeInfo(
        hostname=socket.gethostname(),
        address=_address(),
        arch=_ARCH.get(platform.machine().lower(), platform.machine().lower()),
        kernelVersion=platform.release(),
        os=platform.system().lower(),
        osImage=_os_image(root),
        machineID=_read(root / "etc/machine-id"),
        bootID=_read(root / "proc/sys/kernel/random/boot_id"),
        systemUUID=_read(root / "sys/class/dmi/id/product_uuid").lower(),
        agentVersion=_agent_version(),
    )


def _real(value: float) -> float:
    """``value`` rounded to two decimals; 0.0 for NaN or an infinity, which JSON cannot carry."""
    number = float(value)
    return round(number, 2) if math.isfinite(number) else 0.0


def _count(value: int | None) -> int:
    return int(value) if value is not None and value >= 0 else 0


_cpu_primed = False


def node_stats(*, root: Path = Path("/")) -> NodeStats:
    """How loaded this node is now: CPU, memory, the filesystem at ``root``, network, load.

    CPU percent is measured since the previous call in this process (psutil's non-blocking
    mode); the first call primes the measurement and reports 0.0. A figure the platform cannot
    give is reported as 0, so the shape never changes.
    """
    global _cpu_primed
    if not _cpu_primed:
        psutil.cpu_percent(interval=None)
        _cpu_primed = True
    cpu_percent = psutil.cpu_percent(interval=None)
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(root))
        disk_total, disk_used, disk_percent = disk.total, disk.used, disk.percent
    except OSError:
        disk_total, disk_used, disk_percent = 0, 0, 0.0
    net = psutil.net_io_counters()
    try:
        load1, load5, load15 = psutil.getloadavg()
    except OSError:
        load1 = load5 = load15 = 0.0
    memory_percent = _real(memory.percent)
    disk_real = _real(disk_percent)
    return NodeStats(
        cpu=CPUStats(percent=_real(cpu_percent), count=_count(psutil.cpu_count(logical=True))),
        memory=UsageStats(
            total=_count(memory.total),
            used=_count(memory.total - memory.available),
            percent=memory_percent,
        ),
        disk=UsageStats(total=_count(disk_total), used=_count(disk_used), percent=disk_real),
        net=NetStats(
            bytesSent=_count(net.bytes_sent if net else 0),
            bytesRecv=_count(net.bytes_recv if net else 0),
        ),
        load=LoadStats(load1=_real(load1), load5=_real(load5), load15=_real(load15)),
        pressure=PressureStats(
            memory=memory_percent >= MEMORY_PRESSURE_PERCENT,
            disk=disk_real >= DISK_PRESSURE_PERCENT,
        ),
        ready=True,
    )

"""The node broker as the agent sees it: whether it runs, its files, its config, its system app.

The node broker (``python -m broker.node --config PATH``; issue 15) is a process
the agent starts through its engine, never code it imports. This module decides:

* whether it runs (:func:`broker_wanted`): ``--node-broker on`` always, ``off`` never, ``auto``
  (the default) when the desired document names a device or a route;
* what its ``config.json`` says (:func:`broker_config`), from the ``resource/get`` answers of
  kind device and route, written atomically 0600 and only when its content changes
  (:meth:`NodeBrokerFiles.write_config`): the broker re-reads it when its mtime changes;
* the system app ``baetyl-broker`` handed to the engine beside the user apps
  (:func:`system_app`): a native process on the native engine, a Deployment with a hostPort
  and the broker's directory as a hostPath on the kube engine. Its version is a hash of what
  needs a restart (command line, ports, image), so a config change (devices, routes) is
  re-read by the running broker, and a new port restarts it.

Files, all in ``<state>/nodebroker/`` (relative paths in the config are relative to it, so the
kube engine mounts this one directory)::

    config.json      the broker's config (0600; password hashes)
    server.key       the broker's key, made on the node (0600)    edge.dataplane.brokercert
    server.crt       its certificate, signed by the device CA     edge.dataplane.brokercert
    device-ca.crt    the device CA (verifies device certificates)  edge.dataplane.brokercert
    ca.crt           the cloud CA (verifies the agent's node certificate), copied from <state>
    spool.db         the spool (SQLite; written by the broker, read by the agent's router)
    status.json      the broker's status (devices online, spool size, refusals)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from edge.engines import AppSpec
from edge.errors import EdgeError

__all__ = [
    "BROKER_APP",
    "DEFAULT_PORT",
    "NodeBrokerFiles",
    "NodeBrokerMode",
    "NodeBrokerSettings",
    "broker_config",
    "broker_wanted",
    "desired_refs",
    "system_app",
    "write_atomically",
]

log = logging.getLogger(__name__)

BROKER_APP: Final = "baetyl-broker"
"""The system app's name; the management API refuses user apps named ``baetyl-*``."""
DEFAULT_PORT: Final = 50010
DEFAULT_SPOOL_MAX_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SPOOL_MAX_AGE: Final = 7 * 24 * 3600.0
MAX_QUEUED_PER_SESSION: Final = 1000
CONTAINER_DIR: Final = "/var/lib/baetyl-node-broker"
"""Where the kube engine's broker container sees the broker's directory."""


class NodeBrokerMode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class NodeBrokerSettings:
    """The ``baetyl edge run --node-broker*``/``--spool-*`` flags."""

    mode: NodeBrokerMode = NodeBrokerMode.AUTO
    port: int = DEFAULT_PORT
    bind: str = "0.0.0.0"  # noqa: S104 - the broker is for the node's LAN
    local_port: int | None = None
    hosts: tuple[str, ...] = ()  # the certificate's SANs; empty: edge.dataplane.brokercert's
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_max_age: float = DEFAULT_SPOOL_MAX_AGE
    image: str | None = None  # the kube engine's image for the broker: the agent's own
    host_path: Path | None = None  # the kube engine's hostPath of the broker's directory
    python: str = field(default=sys.executable)  # the native engine's interpreter

    def __post_init__(self) -> None:
        for name, port in (("port", self.port), ("local port", self.local_port)):
            if port is not None and not 0 < port < 65536:
                raise EdgeError(f"The node broker's {name} must be from 1 to 65535, not {port}.")
        if self.local_port is not None and self.local_port == self.port:
            raise EdgeError(
                f"The node broker's local port and TLS port are both {self.port}; give "
                "--node-broker-local-port another port."
            )
        if self.spool_max_bytes <= 0 or self.spool_max_age <= 0:
            raise EdgeError("--spool-max-bytes and --spool-max-age must be positive.")


def _refs(desired: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    items = desired.get(key) or []
    if not isinstance(items, list):
        return []
    return [
        (str(item["name"]), str(item["version"]))
        for item in items
        if isinstance(item, Mapping) and "name" in item and "version" in item
    ]


def desired_refs(desired: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The desired document's ``devices`` and ``routes`` refs, as ``(name, version)``."""
    return _refs(desired, "devices"), _refs(desired, "routes")


def broker_wanted(mode: NodeBrokerMode, desired: Mapping[str, Any]) -> bool:
    """Whether the node broker should run (see the module docstring)."""
    if mode is NodeBrokerMode.OFF:
        return False
    if mode is NodeBrokerMode.ON:
        return True
    devices, routes = desired_refs(desired)
    return bool(devices or routes)


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _device_entry(spec: Mapping[str, Any]) -> dict[str, Any]:
    hash_ = spec.get("passwordHash")
    return {
        "name": str(spec.get("name")),
        "publish": _strings(spec.get("publish")),
        "subscribe": _strings(spec.get("subscribe")),
        "passwordHash": hash_ if isinstance(hash_, str) else None,
        "certificates": _strings(spec.get("certificates")),
    }


def broker_config(
    *,
    node_id: str,
    settings: NodeBrokerSettings,
    devices: Sequence[Mapping[str, Any]],
    routes: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The broker's ``config.json`` (issue 15) from the device and route specs.

    A route's spool filter is its local source; a route whose source is the cloud (downlink)
    spools nothing. Devices and routes are sorted by name, so the same set writes the same file.
    """
    spooled: dict[str, str] = {}
    for route in sorted(routes, key=lambda r: str(r.get("name"))):
        source = route.get("source")
        if isinstance(source, Mapping) and isinstance(source.get("local"), str):
            spooled[str(route.get("name"))] = source["local"]
    local = None
    if settings.local_port is not None:
        local = {"host": "127.0.0.1", "port": settings.local_port}
    return {
        "node": node_id,
        "listen": {"host": settings.bind, "port": settings.port},
        "local": local,
        "tls": {
            "cert": "server.crt",
            "key": "server.key",
            "deviceCa": "device-ca.crt",
            "cloudCa": "ca.crt",
        },
        "devices": [_device_entry(d) for d in sorted(devices, key=lambda d: str(d.get("name")))],
        "spool": {
            "path": "spool.db",
            "routes": spooled,
            "maxBytes": settings.spool_max_bytes,
            "maxAgeSeconds": settings.spool_max_age,
        },
        "status": "status.json",
        "maxQueuedPerSession": MAX_QUEUED_PER_SESSION,
    }


class NodeBrokerFiles:
    """The broker's directory, ``<state>/nodebroker/`` (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root = state_dir / "nodebroker"
        self.config = self.root / "config.json"
        self.key = self.root / "server.key"
        self.cert = self.root / "server.crt"
        self.device_ca = self.root / "device-ca.crt"
        self.cloud_ca = self.root / "ca.crt"
        self.spool = self.root / "spool.db"
        self.status = self.root / "status.json"

    def ensure(self) -> None:
        """Make the directory (0700) and copy the cloud CA into it (the broker verifies the
        agent's node certificate with it)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = (self.state_dir / "ca.crt").read_bytes()
        if not self.cloud_ca.exists() or self.cloud_ca.read_bytes() != ca:
            write_atomically(self.cloud_ca, ca)

    def write_config(self, config: Mapping[str, Any]) -> bool:
        """Write ``config.json`` (0600, atomically) if its content changed; whether it did."""
        data = json.dumps(config, indent=2, sort_keys=True).encode() + b"\n"
        try:
            if self.config.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
        write_atomically(self.config, data, mode=0o600)
        return True

    def touch_config(self) -> None:
        """Have the broker re-read its config (and its certificate with it): a new mtime."""
        if self.config.exists():
            self.config.touch()

    def read_status(self) -> dict[str, Any] | None:
        """The broker's ``status.json``; None while there is none or it does not parse."""
        try:
            data = json.loads(self.status.read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (``mode``) in one rename, synced.

    ``edge.state`` has the same, but importing it loads ``cryptography`` (the node's key files),
    which an agent at rest does not hold.
    """
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as exc:
        raise EdgeError(
            f"Cannot write {path}: {exc.strerror}; check that the state directory is writable "
            "by this user."
        ) from None


def _version(parts: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return f"sys-{digest[:12]}"


def system_app(files: NodeBrokerFiles, settings: NodeBrokerSettings, *, engine: str) -> AppSpec:
    """The ``baetyl-broker`` app for the ``native`` or ``kube`` engine."""
    if engine == "kube":
        if not settings.image:
            raise EdgeError(
                "The kube engine runs the node broker in the agent's image, which is not known; "
                "give --node-broker-image (the helm chart passes it)."
            )
        host_path = settings.host_path or files.root.absolute()
        ports = [{"containerPort": settings.port, "hostPort": settings.port}]
        spec: dict[str, Any] = {
            "type": "container",
            "workload": "deployment",
            "replicas": 1,
            "services": [
                {
                    "name": "broker",
                    "image": settings.image,
                    "command": ["python", "-m", "broker.node"],
                    "args": ["--config", f"{CONTAINER_DIR}/config.json"],
                    "ports": ports,
                    "volumeMounts": [{"name": "nodebroker", "mountPath": CONTAINER_DIR}],
                }
            ],
            "volumes": [{"name": "nodebroker", "hostPath": {"path": str(host_path)}}],
        }
        version = _version({"image": settings.image, "path": str(host_path), "ports": ports})
    else:
        argv = [settings.python, "-m", "broker.node", "--config", str(files.config.absolute())]
        spec = {
            "type": "native",
            "services": [{"name": "broker", "command": argv}],
        }
        version = _version({"argv": argv, "port": settings.port, "local": settings.local_port})
    return AppSpec(BROKER_APP, version, spec)

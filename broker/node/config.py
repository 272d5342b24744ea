"""The node broker's configuration file (written by the agent; PROTOCOL.md "Node broker").

``NodeConfig.load(path)`` reads and validates it strictly: an unknown key, a wrong type, an
invalid topic filter or a malformed password hash is a ``NodeConfigError`` naming the field, so
the broker refuses to start on it (exit 2), or keeps its previous configuration on a reload.
Relative paths are relative to the file's directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.acl import valid_filter
from broker.errors import NodeConfigError

__all__ = ["DeviceConfig", "NodeConfig", "SpoolConfig", "TLSPaths", "stamp"]

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NODE_RE = re.compile(rf"{_LABEL}\.{_LABEL}")
_LABEL_RE = re.compile(_LABEL)
_SERIAL_RE = re.compile(r"[0-9a-f]{1,40}")
_HASH_RE = re.compile(
    r"scrypt\$(\d{1,9})\$(\d{1,4})\$(\d{1,4})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)"
)
MAX_FILTERS = 32


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    password_hash: str | None
    certificates: frozenset[str]  # serials, lowercase hex without leading zeros


@dataclass(frozen=True, slots=True)
class TLSPaths:
    cert: Path
    key: Path
    device_ca: Path
    cloud_ca: Path


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    path: Path
    routes: Mapping[str, str]  # route name -> local topic filter
    max_bytes: int
    max_age_seconds: float


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: str
    listen: tuple[str, int]
    local: tuple[str, int] | None
    tls: TLSPaths
    devices: Mapping[str, DeviceConfig]
    spool: SpoolConfig
    status: Path
    max_queued_per_session: int

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeConfigError(
                f"Cannot read the node broker's configuration {path}: {exc}. Pass the file the "
                "agent wrote with --config."
            ) from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NodeConfigError(
                f"The node broker's configuration {path} is not JSON ({exc}); fix or rewrite it."
            ) from None
        try:
            return cls.parse(raw, path.parent)
        except NodeConfigError as exc:
            raise NodeConfigError(f"{path}: {exc}") from None

    @classmethod
    def parse(cls, raw: object, base: Path) -> NodeConfig:
        top = _object(
            raw,
            "the configuration",
            required={"node", "listen", "tls", "spool", "status", "maxQueuedPerSession"},
            optional={"local", "devices"},
        )
        node = top["node"]
        if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
            raise NodeConfigError(
                f"'node' is {node!r}; it must be the node id '<namespace>.<node>' (DNS labels)."
            )
        listen = _address(top["listen"], "listen")
        local = None if top.get("local") is None else _address(top["local"], "local")
        if local is not None and not _loopback(local[0]):
            raise NodeConfigError(
                f"'local.host' is {local[0]!r}; the plaintext listener serves this machine only: "
                "use 127.0.0.1, ::1 or localhost."
            )
        tls_raw = _object(top["tls"], "tls", required={"cert", "key", "deviceCa", "cloudCa"})
        tls = TLSPaths(
            *(
                _path(tls_raw[key], f"tls.{key}", base)
                for key in ("cert", "key", "deviceCa", "cloudCa")
            )
        )
        devices_raw = top.get("devices") or []
        if not isinstance(devices_raw, list):
            raise NodeConfigError("'devices' must be a list of device objects.")
        devices: dict[str, DeviceConfig] = {}
        for index, item in enumerate(devices_raw):
            device = _device(item, f"devices[{index}]")
            if device.name in devices:
                raise NodeConfigError(
                    f"devices[{index}]: the device {device.name!r} is listed twice."
                )
            devices[device.name] = device
        spool_raw = _object(
            top["spool"], "spool", required={"path", "routes", "maxBytes", "maxAgeSeconds"}
        )
        routes_raw = spool_raw["routes"]
        if not isinstance(routes_raw, dict):
            raise NodeConfigError("'spool.routes' must be an object {route name: topic filter}.")
        routes: dict[str, str] = {}
        for name, topic_filter in routes_raw.items():
            if not isinstance(topic_filter, str) or not valid_filter(topic_filter):
                raise NodeConfigError(
                    f"'spool.routes.{name}' is {topic_filter!r}; it must be an MQTT topic filter."
                )
            if topic_filter.startswith("$"):
                raise NodeConfigError(
                    f"'spool.routes.{name}' is {topic_filter!r}; a local source never starts "
                    "with '$'."
                )
            routes[name] = topic_filter
        max_bytes = _int(spool_raw["maxBytes"], "spool.maxBytes", 1)
        max_age = spool_raw["maxAgeSeconds"]
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
            raise NodeConfigError(
                f"'spool.maxAgeSeconds' is {max_age!r}; it must be a positive number of seconds."
            )
        spool = SpoolConfig(
            _path(spool_raw["path"], "spool.path", base), routes, max_bytes, float(max_age)
        )
        return cls(
            node=node,
            listen=listen,
            local=local,
            tls=tls,
            devices=devices,
            spool=spool,
            status=_path(top["status"], "status", base),
            max_queued_per_session=_int(top["maxQueuedPerSession"], "maxQueuedPerSession", 1),
        )


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one loaded (inode, mtime, size); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _object(
    raw: object,
    what: str,
    *,
    required: set[str],
    optional: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise NodeConfigError(f"{what} must be a JSON object.")
    missing = sorted(required - raw.keys())
    if missing:
        raise NodeConfigError(f"{what} lacks {', '.join(repr(m) for m in missing)}.")
    unknown = sorted(raw.keys() - required - optional)
    if unknown:
        raise NodeConfigError(
            f"{what} has unknown keys {', '.join(repr(u) for u in unknown)}; "
            f"allowed: {', '.join(sorted(required | optional))}."
        )
    return raw


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NodeConfigError(
            f"'{what}' is {value!r}; it must be an integer of at least {minimum}."
        )
    return value


def _address(raw: object, what: str) -> tuple[str, int]:
    fields = _object(raw, what, required={"host", "port"})
    host, port = fields["host"], fields["port"]
    if not isinstance(host, str) or not host:
        raise NodeConfigError(f"'{what}.host' must be a host name or IP address.")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise NodeConfigError(f"'{what}.port' is {port!r}; use a TCP port from 0 to 65535.")
    return host, port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _path(value: object, what: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise NodeConfigError(f"'{what}' must be a file path.")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _filters(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_FILTERS:
        raise NodeConfigError(f"'{what}' must be a list of at most {MAX_FILTERS} topic filters.")
    for item in value:
        if not isinstance(item, str) or not valid_filter(item) or item.startswith("$"):
            raise NodeConfigError(
                f"'{what}' holds {item!r}; each must be an MQTT topic filter not starting with '$'."
            )
    return tuple(value)


def _device(raw: object, what: str) -> DeviceConfig:
    fields = _object(
        raw,
        what,
        required={"name"},
        optional={"publish", "subscribe", "passwordHash", "certificates"},
    )
    name = fields["name"]
    if not isinstance(name, str) or not _LABEL_RE.fullmatch(name):
        raise NodeConfigError(f"{what}.name is {name!r}; a device name is a DNS label.")
    password_hash = fields.get("passwordHash")
    if password_hash is not None and (
        not isinstance(password_hash, str) or not _HASH_RE.fullmatch(password_hash)
    ):
        raise NodeConfigError(
            f"{what}.passwordHash is not 'scrypt$N$r$p$<salt base64>$<hash base64>'; set the "
            "device's password again (baetyl device password)."
        )
    serials = fields.get("certificates") or []
    if not isinstance(serials, list) or not all(
        isinstance(s, str) and _SERIAL_RE.fullmatch(s) and not s.startswith("0") for s in serials
    ):
        raise NodeConfigError(
            f"{what}.certificates must list serials in lowercase hex without leading zeros."
        )
    return DeviceConfig(
        name=name,
        publish=_filters(fields.get("publish", []), f"{what}.publish"),
        subscribe=_filters(fields.get("subscribe", []), f"{what}.subscribe"),
        password_hash=password_hash,
        certificates=frozenset(serials),
    )

"""The directory of one app version on the node, and what the native engine keeps in it.

::

    <root>/apps/<app>/<version>/
        volumes/<volume>/<key>    config data (0644), secret data (0600 in a 0700 directory);
                                  a certificate: tls.crt and ca.crt (0644), tls.key (0600),
                                  in a 0700 directory; a hostPath volume is a symlink to its path
        logs/<service>.log        stdout and stderr of every replica, appended;
        logs/<service>.log.1..N   older output (copy-truncate rotation)
        state.json                the instances: pid, process start time, restarts (0600)

``state.json`` is what lets the next agent adopt the processes instead of starting them twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypedDict

from edge.engines.plan import Plan, SpecError, VolumeKind, check_file_name

__all__ = [
    "STATE_FILE",
    "InstanceRecord",
    "StateRecord",
    "log_file",
    "materialise",
    "read_state",
    "rotate",
    "volume_dirs",
    "write_state",
]

STATE_FILE: Final = "state.json"
_FORMAT: Final = 1
_NONE: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType({})
_PRIVATE_KEY_FILE: Final = "tls.key"  # of a certificate volume: the only file that is secret


class InstanceRecord(TypedDict):
    """One instance in ``state.json``."""

    service: str
    replica: int
    pid: int | None
    start_time: int | None  # clock ticks since boot (/proc/<pid>/stat field 22)
    started_at: float | None  # unix seconds
    restarts: int
    state: str
    cause: str | None


class StateRecord(TypedDict):
    """``state.json``: the app version, its spec (to restart instances) and its instances."""

    format: int
    name: str
    version: str
    spec: dict[str, Any]
    instances: list[InstanceRecord]


def log_file(app_dir: Path, service: str) -> Path:
    """The log file of a service (shared by its replicas)."""
    return app_dir / "logs" / f"{service}.log"


def volume_dirs(app_dir: Path, plan: Plan) -> dict[str, Path]:
    """Where each volume's files are: under ``volumes/``, or the host path itself."""
    return {
        v.name: Path(v.source) if v.kind is VolumeKind.HOST_PATH else app_dir / "volumes" / v.name
        for v in plan.volumes
    }


def materialise(
    app_dir: Path,
    plan: Plan,
    configs: Mapping[str, Mapping[str, str]],
    secrets: Mapping[str, Mapping[str, str]],
    certificates: Mapping[str, Mapping[str, str]] = _NONE,
) -> None:
    """Create the app version directory with its volume files and log directory.

    Raises :class:`SpecError` when a config, secret or certificate's data was not given or a key
    cannot be a file name, ``OSError`` when the files cannot be written.
    """
    if app_dir.exists():
        shutil.rmtree(app_dir)  # a half-made directory of an earlier attempt
    (app_dir / "logs").mkdir(parents=True)
    app_dir.chmod(0o755)
    volumes = app_dir / "volumes"
    volumes.mkdir(mode=0o755)
    for volume in plan.volumes:
        target = volumes / volume.name
        if volume.kind is VolumeKind.HOST_PATH:
            target.symlink_to(volume.source, target_is_directory=True)
            continue
        secret = volume.kind is VolumeKind.SECRET
        certificate = volume.kind is VolumeKind.CERTIFICATE
        store = secrets if secret else certificates if certificate else configs
        data = store.get(volume.source)
        if data is None:
            raise SpecError(
                f"The {volume.kind.value} {volume.source!r} of volume {volume.name!r} was not "
                "delivered with the app; publish it on the cloud, or remove the volume."
            )
        target.mkdir()
        target.chmod(0o700 if secret or certificate else 0o755)
        for key, content in data.items():
            check_file_name(f"key of {volume.kind.value} {volume.source!r}", key)
            private = secret or (certificate and key == _PRIVATE_KEY_FILE)
            _write_file(target / key, content.encode(), 0o600 if private else 0o644)


def write_state(app_dir: Path, record: StateRecord) -> None:
    """Replace ``state.json`` atomically (a crash leaves the old or the new one, never half)."""
    _write_file(app_dir / STATE_FILE, json.dumps(record, indent=1).encode(), 0o600)


def read_state(app_dir: Path) -> StateRecord:
    """Read ``state.json``; raises ``OSError`` or ``ValueError`` if it is missing or malformed."""
    raw = json.loads((app_dir / STATE_FILE).read_bytes())
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError(f"{app_dir / STATE_FILE} is not a state file of format {_FORMAT}.")
    if not (
        isinstance(raw.get("name"), str)
        and isinstance(raw.get("version"), str)
        and isinstance(raw.get("spec"), dict)
        and isinstance(raw.get("instances"), list)
    ):
        raise ValueError(f"{app_dir / STATE_FILE} lacks name, version, spec or instances.")
    instances = [_instance(i) for i in raw["instances"]]
    return StateRecord(
        format=_FORMAT,
        name=raw["name"],
        version=raw["version"],
        spec=raw["spec"],
        instances=instances,
    )


def rotate(path: Path, *, max_bytes: int, backups: int) -> bool:
    """Copy-truncate ``path`` to ``.1`` (``.1`` .. ``.N-1`` move up) once it passes ``max_bytes``.

    The writer keeps its file descriptor (opened with O_APPEND, so it writes at the new end).
    Returns whether the file was rotated.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def _instance(raw: object) -> InstanceRecord:
    def optional(value: object, kind: type | tuple[type, ...]) -> bool:
        return value is None or (isinstance(value, kind) and not isinstance(value, bool))

    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("service"), str)
        and isinstance(raw.get("replica"), int)
        and optional(raw.get("pid"), int)
        and optional(raw.get("start_time"), int)
        and optional(raw.get("started_at"), (int, float))
        and isinstance(raw.get("restarts"), int)
        and isinstance(raw.get("state"), str)
        and optional(raw.get("cause"), str)
    ):
        raise ValueError(f"The instance record {raw!r} is malformed.")
    return InstanceRecord(
        service=raw["service"],
        replica=raw["replica"],
        pid=raw["pid"],
        start_time=raw["start_time"],
        started_at=raw["started_at"],
        restarts=raw["restarts"],
        state=raw["state"],
        cause=raw["cause"],
    )


def _write_file(path: Path, content: bytes, mode: int) -> None:
    """Write ``path`` with exactly ``mode`` (whatever the umask), through a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""What an app spec asks the native engine for, parsed once: its services and their volumes.

The spec has the shape of the management API's ``AppWrite`` (type, services, volumes, replicas,
workload). Parsing checks what the engine relies on — names become file and directory names —
and raises :class:`SpecError` with a sentence saying what to change.

A native service finds its files through environment variables, not through ``mountPath`` (a
container notion: a process cannot have a path of its own): ``BAETYL_VOLUME_<NAME>`` for every
volume of the app and ``BAETYL_MOUNT_<NAME>`` for every volume the service mounts, both the
directory that holds the volume's files (for a hostPath volume, the host path itself). ``<NAME>``
is the volume name uppercased with every character other than a letter or digit turned into
``_`` (``bridge-conf`` -> ``BAETYL_VOLUME_BRIDGE_CONF``). ``readOnly`` is not enforced.

A function app's service becomes one program too: the Python function runtime
(:mod:`edge.functions.runtime`), told its handlers through ``BAETYL_FUNCTIONS``. A handler's
``codeConfig`` names the config whose files are its modules; the app must hold it in a volume
(found by config name, or else by volume name). Without ``codeConfig`` every config volume of
the app is searched. Function names are unique across the app: they are its URLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge.functions import FUNCTIONS_ENV, runtime_command

__all__ = [
    "Plan",
    "Service",
    "SpecError",
    "Volume",
    "VolumeKind",
    "Workload",
    "check_file_name",
    "env_suffix",
]

_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


class SpecError(ValueError):
    """An app spec the native engine cannot run; the message says what to change."""


class Workload(StrEnum):
    DEPLOYMENT = "deployment"
    DAEMONSET = "daemonset"
    JOB = "job"


class VolumeKind(StrEnum):
    CONFIG = "config"
    SECRET = "secret"  # noqa: S105 - a kind of volume, not a password
    CERTIFICATE = "certificate"
    HOST_PATH = "hostPath"


@dataclass(frozen=True, slots=True)
class Volume:
    """A volume of the app: the config, secret or certificate whose data it holds, or a host
    path."""

    name: str
    kind: VolumeKind
    source: str  # the config, secret or certificate name, or the host path


@dataclass(frozen=True, slots=True)
class Service:
    """One program of the app, run ``replicas`` times."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[str, ...]  # names of the volumes it mounts
    workdir: Path | None
    functions: tuple[str, ...] = ()  # a function service's function names


@dataclass(frozen=True, slots=True)
class Plan:
    """An app spec as the native engine runs it."""

    type: str
    workload: Workload
    replicas: int
    services: tuple[Service, ...]
    volumes: tuple[Volume, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Plan:
        """Parse the app spec; only a native app's services are read (other types are not run)."""
        kind = spec.get("type", "container")
        if kind not in ("native", "container", "function"):
            raise SpecError(f"The app type {kind!r} is unknown; use native, container or function.")
        try:
            workload = Workload(spec.get("workload", "deployment"))
        except ValueError:
            given = spec.get("workload")
            raise SpecError(
                f"The workload {given!r} is unknown; use deployment, daemonset or job."
            ) from None
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise SpecError(f"replicas must be a whole number of at least 0, not {replicas!r}.")
        if workload is Workload.DAEMONSET:
            replicas = 1  # one per node, and this is the node
        if kind == "container":
            return cls(kind, workload, replicas, (), ())
        volumes = tuple(_volume(v) for v in _list(spec, "volumes"))
        names = {v.name for v in volumes}
        if kind == "function":
            services = tuple(_function_service(s, volumes) for s in _list(spec, "services"))
            _check_unique("function", [f for s in services for f in s.functions])
        else:
            services = tuple(_service(s, names) for s in _list(spec, "services"))
        _check_unique("service", [s.name for s in services])
        _check_unique("volume", [v.name for v in volumes])
        return cls(kind, workload, replicas, services, volumes)


def env_suffix(volume: str) -> str:
    """The ``<NAME>`` of ``BAETYL_VOLUME_<NAME>``: uppercased, non-alphanumerics as ``_``."""
    return re.sub(r"[^A-Z0-9]", "_", volume.upper())


def check_file_name(what: str, name: object) -> str:
    """Return ``name`` if it can be a file name of its own (no ``/``, not ``.`` or ``..``)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise SpecError(
            f"The {what} {name!r} cannot be used as a file name; use letters, digits, '.', '_' "
            "and '-', starting with a letter, digit or '_'."
        )
    return name


def _list(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = spec.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise SpecError(f"{key} must be a list of objects.")
    return items


def _strings(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{where} must be a list of strings.")
    return tuple(value)


def _check_unique(what: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"The {what} name {duplicates[0]!r} is used twice; give each a new name.")


def _volume(item: Mapping[str, Any]) -> Volume:
    name = check_file_name("volume name", item.get("name"))
    sources = [k for k in VolumeKind if k.value in item]
    if len(sources) != 1:
        raise SpecError(
            f"The volume {name!r} needs exactly one source: config, secret, certificate or "
            "hostPath."
        )
    kind = sources[0]
    source = item[kind.value]
    field = "path" if kind is VolumeKind.HOST_PATH else "name"
    value = source.get(field) if isinstance(source, Mapping) else None
    if not isinstance(value, str) or not value:
        raise SpecError(f"The volume {name!r} needs {kind.value}.{field}.")
    if kind is VolumeKind.HOST_PATH and not value.startswith("/"):
        raise SpecError(f"The hostPath of volume {name!r} must be an absolute path, not {value!r}.")
    return Volume(name, kind, value)


def _service(item: Mapping[str, Any], volumes: set[str]) -> Service:
    name = check_file_name("service name", item.get("name"))
    command = _strings(f"The command of service {name!r}", item.get("command"))
    if not command or not command[0]:
        raise SpecError(f"The service {name!r} needs a command: the program to run, then its args.")
    args = _strings(f"The args of service {name!r}", item.get("args", []))
    env: list[tuple[str, str]] = []
    for var in _list(item, "env"):
        key, value = var.get("name"), var.get("value", "")
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
            raise SpecError(
                f"The env of service {name!r} must be a list of {{name, value}} strings."
            )
        env.append((key, value))
    mounts: list[str] = []
    for mount in _list(item, "volumeMounts"):
        volume = mount.get("name")
        if volume not in volumes:
            raise SpecError(
                f"The service {name!r} mounts the volume {volume!r}, which the app does not "
                "declare; add it to volumes or remove the mount."
            )
        mounts.append(volume)
    workdir = item.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        raise SpecError(f"The workdir of service {name!r} must be an absolute path.")
    return Service(
        name=name,
        argv=command + args,
        env=tuple(env),
        mounts=tuple(mounts),
        workdir=Path(workdir) if workdir is not None else None,
    )


def _function_service(item: Mapping[str, Any], volumes: tuple[Volume, ...]) -> Service:
    """A function service as the runtime process that serves its handlers."""
    name = check_file_name("service name", item.get("name"))
    runtime = item.get("runtime", "python3")
    if runtime != "python3":
        raise SpecError(
            f"The runtime {runtime!r} of service {name!r} is not available; use python3."
        )
    handlers = _list(item, "handlers")
    if not handlers:
        raise SpecError(
            f"The function service {name!r} needs handlers, e.g. "
            '[{"name": "filter", "handler": "filters.on_message"}].'
        )
    entries: list[dict[str, Any]] = []
    mounts: list[str] = []
    for handler in handlers:
        function = check_file_name(f"function name of service {name!r}", handler.get("name"))
        target = handler.get("handler")
        if not isinstance(target, str) or not _HANDLER.fullmatch(target):
            raise SpecError(
                f"The handler of function {function!r} must be module.function, e.g. "
                f"filters.on_message, not {target!r}."
            )
        code = _code_volumes(function, handler.get("codeConfig"), volumes)
        mounts.extend(v for v in code if v not in mounts)
        entries.append(
            {
                "name": function,
                "handler": target,
                "code": [f"BAETYL_VOLUME_{env_suffix(v)}" for v in code],
            }
        )
    return Service(
        name=name,
        argv=runtime_command(),
        env=((FUNCTIONS_ENV, json.dumps(entries)),),
        mounts=tuple(mounts),
        workdir=None,
        functions=tuple(e["name"] for e in entries),
    )


def _code_volumes(function: str, config: object, volumes: tuple[Volume, ...]) -> list[str]:
    """The volumes holding a function's modules: its ``codeConfig``'s, or every config's."""
    configs = [v for v in volumes if v.kind is VolumeKind.CONFIG]
    if config is None:
        return [v.name for v in configs]
    found = [v.name for v in configs if v.source == config] or [
        v.name for v in configs if v.name == config
    ]
    if not found:
        raise SpecError(
            f"The function {function!r} takes its code from the config {config!r}, which no "
            f'volume of the app holds; add {{"name": "code", "config": {{"name": "{config}"}}}} '
            "to volumes."
        )
    return found[:1]

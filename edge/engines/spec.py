"""An app spec parsed once, into frozen values both engines read.

The spec has the shape of the management API's ``AppWrite`` (type, services, volumes, replicas,
workload, hostNetwork, registries) as ``resource/get`` serves it. :meth:`AppModel.parse` checks
everything either engine relies on and raises :class:`SpecError` with a sentence saying what to
change; after it, no engine reads the raw dict. What each type's services carry:

* ``container`` (the kube engine): image, command, args, env, ports, volumeMounts (with their
  ``mountPath``), resources; the app's registries;
* ``native`` (the native engine): command (required) and args, env, volumeMounts, workdir;
* ``function`` (the native engine, through the function runtime): runtime and handlers.

Names become file and directory names on a native node, so service and volume names must be
usable as one (:func:`check_file_name`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "AppModel",
    "Handler",
    "Mount",
    "Port",
    "ServiceModel",
    "SpecError",
    "Volume",
    "VolumeKind",
    "Workload",
    "check_file_name",
]

_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_HANDLER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_TYPES = ("native", "container", "function")
_PROTOCOLS = ("TCP", "UDP", "SCTP")


class SpecError(ValueError):
    """An app spec an engine cannot run; the message says what to change."""


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
class Port:
    """A port a container listens on, published on the host when ``host_port`` is set."""

    container_port: int
    host_port: int | None
    protocol: str  # TCP, UDP or SCTP


@dataclass(frozen=True, slots=True)
class Mount:
    """A volume a service mounts; ``path`` is a container's (a native process has none)."""

    volume: str
    path: str | None
    read_only: bool


@dataclass(frozen=True, slots=True)
class Handler:
    """One function of a function service: its URL name, ``module.function``, and the config
    holding its code (None: every config volume of the app)."""

    name: str
    target: str
    code_config: str | None


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """One service of the app; the fields its app type does not use stay empty."""

    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[Port, ...] = ()
    mounts: tuple[Mount, ...] = ()
    limits: tuple[tuple[str, str | int | float], ...] = ()
    requests: tuple[tuple[str, str | int | float], ...] = ()
    workdir: str | None = None
    runtime: str = "python3"
    handlers: tuple[Handler, ...] = ()


@dataclass(frozen=True, slots=True)
class AppModel:
    """An app spec, checked."""

    type: str  # native, container or function
    workload: Workload
    replicas: int  # as given; a daemonset runs one per node whatever it says
    host_network: bool
    services: tuple[ServiceModel, ...]
    volumes: tuple[Volume, ...]
    registries: tuple[str, ...]  # the names of a container app's registries

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> AppModel:
        """Parse and check ``spec``; :class:`SpecError` says what is wrong."""
        kind = spec.get("type", "container")
        if kind not in _TYPES:
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
        host_network = spec.get("hostNetwork", False)
        if not isinstance(host_network, bool):
            raise SpecError(f"hostNetwork must be true or false, not {host_network!r}.")
        volumes = tuple(_volume(v) for v in _list(spec, "volumes"))
        names = {v.name for v in volumes}
        items = _list(spec, "services")
        registries: tuple[str, ...] = ()
        if kind == "function":
            services = tuple(_function_service(s) for s in items)
            _check_unique("function", [h.name for s in services for h in s.handlers])
        elif kind == "native":
            services = tuple(_native_service(s, names) for s in items)
        else:
            services = tuple(_container_service(s) for s in items)
            registries = tuple(_registry(r) for r in _list(spec, "registries"))
        _check_unique("service", [s.name for s in services])
        _check_unique("volume", [v.name for v in volumes])
        return cls(kind, workload, replicas, host_network, services, volumes, registries)


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
    if items is None and key == "registries":
        return []
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


def _registry(item: Mapping[str, Any]) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError('registries must be a list of {"name": <registry>} objects.')
    return name


def _env(name: str, item: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    env: list[tuple[str, str]] = []
    for var in _list(item, "env"):
        key, value = var.get("name"), var.get("value", "")
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
            raise SpecError(
                f"The env of service {name!r} must be a list of {{name, value}} strings."
            )
        env.append((key, value))
    return tuple(env)


def _mounts(
    name: str, item: Mapping[str, Any], volumes: set[str] | None, *, path: bool
) -> list[Mount]:
    """The service's volumeMounts; ``path``: each must have a ``mountPath`` (a container's).

    ``volumes`` None: a mount may name a volume the app does not declare. So for a container
    app, whose pod the Kubernetes API checks as a whole (its refusal becomes the app's cause).
    """
    mounts: list[Mount] = []
    for mount in _list(item, "volumeMounts"):
        volume = mount.get("name")
        if not isinstance(volume, str) or (volumes is not None and volume not in volumes):
            raise SpecError(
                f"The service {name!r} mounts the volume {volume!r}, which the app does not "
                "declare; add it to volumes or remove the mount."
            )
        mount_path = mount.get("mountPath")
        if path and (not isinstance(mount_path, str) or not mount_path):
            raise SpecError(
                f"The mount of volume {volume!r} in service {name!r} needs a mountPath, the "
                "directory the container sees it at."
            )
        read_only = mount.get("readOnly", False)
        if not isinstance(read_only, bool):
            raise SpecError(f"readOnly of the mount of volume {volume!r} must be true or false.")
        mounts.append(Mount(volume, mount_path if isinstance(mount_path, str) else None, read_only))
    return mounts


def _native_service(item: Mapping[str, Any], volumes: set[str]) -> ServiceModel:
    name = check_file_name("service name", item.get("name"))
    command = _strings(f"The command of service {name!r}", item.get("command"))
    if not command or not command[0]:
        raise SpecError(f"The service {name!r} needs a command: the program to run, then its args.")
    args = _strings(f"The args of service {name!r}", item.get("args", []))
    env = _env(name, item)
    mounts = _mounts(name, item, volumes, path=False)
    workdir = item.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        raise SpecError(f"The workdir of service {name!r} must be an absolute path.")
    return ServiceModel(
        name, command=command, args=args, env=env, mounts=tuple(mounts), workdir=workdir
    )


def _function_service(item: Mapping[str, Any]) -> ServiceModel:
    name = check_file_name("service name", item.get("name"))
    runtime = item.get("runtime", "python3")
    if runtime != "python3":
        raise SpecError(
            f"The runtime {runtime!r} of service {name!r} is not available; use python3."
        )
    items = _list(item, "handlers")
    if not items:
        raise SpecError(
            f"The function service {name!r} needs handlers, e.g. "
            '[{"name": "filter", "handler": "filters.on_message"}].'
        )
    handlers: list[Handler] = []
    for handler in items:
        function = check_file_name(f"function name of service {name!r}", handler.get("name"))
        target = handler.get("handler")
        if not isinstance(target, str) or not _HANDLER.fullmatch(target):
            raise SpecError(
                f"The handler of function {function!r} must be module.function, e.g. "
                f"filters.on_message, not {target!r}."
            )
        code = handler.get("codeConfig")
        if code is not None and (not isinstance(code, str) or not code):
            raise SpecError(
                f"The codeConfig of function {function!r} must name a config, not {code!r}."
            )
        handlers.append(Handler(function, target, code))
    return ServiceModel(name, runtime=runtime, handlers=tuple(handlers))


def _container_service(item: Mapping[str, Any]) -> ServiceModel:
    name = check_file_name("service name", item.get("name"))
    image = item.get("image")
    if not isinstance(image, str) or not image:
        raise SpecError(f"The service {name!r} needs an image, e.g. nginx:1.27.")
    command = _strings(f"The command of service {name!r}", item.get("command") or [])
    args = _strings(f"The args of service {name!r}", item.get("args") or [])
    ports = tuple(_port(name, p) for p in _list(item, "ports"))
    resources = item.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise SpecError(f"The resources of service {name!r} must be an object.")
    limits, requests = (_quantities(name, kind, resources) for kind in ("limits", "requests"))
    return ServiceModel(
        name,
        image=image,
        command=command,
        args=args,
        env=_env(name, item),
        ports=ports,
        mounts=tuple(_mounts(name, item, None, path=True)),
        limits=limits,
        requests=requests,
    )


def _port(name: str, item: Mapping[str, Any]) -> Port:
    container_port = _port_number(name, "containerPort", item.get("containerPort"))
    host = item.get("hostPort")
    host_port = None if host is None else _port_number(name, "hostPort", host)
    protocol = item.get("protocol", "TCP")
    if protocol not in _PROTOCOLS:
        raise SpecError(
            f"The protocol {protocol!r} of a port of service {name!r} is unknown; use TCP, UDP "
            "or SCTP."
        )
    return Port(container_port, host_port, protocol)


def _port_number(name: str, key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise SpecError(
            f"The {key} of a port of service {name!r} must be a number from 1 to 65535, "
            f"not {value!r}."
        )
    return value


def _quantities(
    name: str, kind: str, resources: Mapping[str, Any]
) -> tuple[tuple[str, str | int | float], ...]:
    given = resources.get(kind) or {}
    if not isinstance(given, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
        for k, v in given.items()
    ):
        raise SpecError(
            f"The resources.{kind} of service {name!r} must map a resource to a quantity, "
            'e.g. {"cpu": "500m", "memory": "128Mi"}.'
        )
    return tuple(given.items())

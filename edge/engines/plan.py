"""What an app spec asks the native engine for: its services as programs, and their volumes.

The spec is parsed and checked once by :class:`~edge.engines.spec.AppModel` (which the kube
engine's renderer reads too); a :class:`Plan` is that model as the native engine runs it, and
:class:`SpecError` says what to change when it cannot be.

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
from pathlib import Path
from typing import Any

from edge.engines.spec import (
    AppModel,
    ServiceModel,
    SpecError,
    Volume,
    VolumeKind,
    Workload,
    check_file_name,
)
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
        return cls.of(AppModel.parse(spec))

    @classmethod
    def of(cls, app: AppModel) -> Plan:
        """The parsed app as programs; a container app has none (this engine does not run it)."""
        # one per node, and this is the node
        replicas = 1 if app.workload is Workload.DAEMONSET else app.replicas
        if app.type == "container":
            return cls(app.type, app.workload, replicas, (), ())
        if app.type == "function":
            services = tuple(_function_service(s, app.volumes) for s in app.services)
        else:
            services = tuple(_service(s) for s in app.services)
        return cls(app.type, app.workload, replicas, services, app.volumes)


def env_suffix(volume: str) -> str:
    """The ``<NAME>`` of ``BAETYL_VOLUME_<NAME>``: uppercased, non-alphanumerics as ``_``."""
    return re.sub(r"[^A-Z0-9]", "_", volume.upper())


def _service(service: ServiceModel) -> Service:
    return Service(
        name=service.name,
        argv=service.command + service.args,
        env=service.env,
        mounts=tuple(m.volume for m in service.mounts),
        workdir=Path(service.workdir) if service.workdir is not None else None,
    )


def _function_service(service: ServiceModel, volumes: tuple[Volume, ...]) -> Service:
    """A function service as the runtime process that serves its handlers."""
    entries: list[dict[str, Any]] = []
    mounts: list[str] = []
    for handler in service.handlers:
        code = _code_volumes(handler.name, handler.code_config, volumes)
        mounts.extend(v for v in code if v not in mounts)
        entries.append(
            {
                "name": handler.name,
                "handler": handler.target,
                "code": [f"BAETYL_VOLUME_{env_suffix(v)}" for v in code],
            }
        )
    return Service(
        name=service.name,
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

"""What every engine takes and gives back.

The agent hands an engine the complete set of apps the node should run (``apply``); the engine
makes it so — starts what is new, replaces what changed version, stops and removes what is no
longer there — and reports each app's status. An engine is an async context manager: entering
adopts what a previous agent process left running (never starting a duplicate); leaving stops
supervising but leaves the apps running (they keep working while the agent is down).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

__all__ = [
    "AppSpec",
    "AppStatus",
    "Engine",
    "InstanceState",
    "InstanceStatus",
    "Reference",
    "references",
]

_MOUNTED_KINDS = ("config", "secret", "certificate")  # the volume fields naming what is mounted


@dataclass(frozen=True, slots=True)
class AppSpec:
    """One app as the node should run it, with the data of every volume it mounts.

    ``spec`` is the app spec served by ``resource/get`` (type, services, volumes with the
    version of each config/secret/certificate, registries, replicas, workload, ...).
    ``configs``/``secrets``/``certificates`` map a config/secret/certificate name to its data
    (file name -> content; a certificate's files are ``tls.crt``, ``tls.key`` and maybe
    ``ca.crt``). ``registries`` maps a registry name to its ``address``, ``username`` and
    ``password``; only a container app's are fetched (a native engine pulls no images).
    """

    name: str
    version: str
    spec: dict[str, Any]
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    certificates: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    registries: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Reference:
    """Something an app spec names by version, fetched with ``resource/get``."""

    kind: str  # config, secret, certificate or registry
    name: str
    version: str

    @property
    def key(self) -> str:
        """``<kind>/<name>/<version>``, how the agent files the fetched spec."""
        return f"{self.kind}/{self.name}/{self.version}"


def references(spec: Mapping[str, Any]) -> list[Reference]:
    """What an app spec needs besides itself: each volume's config, secret or certificate, and,
    for a container app only, its registries (native and function apps pull no images, so a
    node never fetches credentials it has no use for)."""
    found: list[Reference] = []
    for volume in spec.get("volumes", []) or []:
        for kind in _MOUNTED_KINDS:
            source = volume.get(kind) if isinstance(volume, Mapping) else None
            if isinstance(source, Mapping):
                found.append(Reference(kind, str(source.get("name")), str(source.get("version"))))
    if spec.get("type", "container") == "container":
        for entry in spec.get("registries", []) or []:
            if isinstance(entry, Mapping):
                found.append(
                    Reference("registry", str(entry.get("name")), str(entry.get("version")))
                )
    return found


class InstanceState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One running instance (a process, or a pod)."""

    name: str
    state: InstanceState
    pid: int | None = None
    restarts: int = 0
    cause: str | None = None  # why it is not running, e.g. "exited with code 2"
    started_at: float | None = None  # unix seconds


@dataclass(frozen=True, slots=True)
class AppStatus:
    """An app's status: the worst of its instances, and each of them."""

    name: str
    version: str
    state: InstanceState
    instances: tuple[InstanceStatus, ...] = ()
    cause: str | None = None

    def to_report(self) -> dict[str, Any]:
        """The ``appstats`` entry the node reports (PROTOCOL.md, Baetyl's shape)."""
        return {
            "name": self.name,
            "version": self.version,
            "status": self.state.value,
            "cause": self.cause or "",
            "instances": {
                i.name: {
                    "status": i.state.value,
                    "pid": i.pid,
                    "restarts": i.restarts,
                    "cause": i.cause or "",
                    "createTime": i.started_at,
                }
                for i in self.instances
            },
        }


class Engine(Protocol):
    """Runs the node's apps; see the module docstring."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def apply(self, apps: Sequence[AppSpec]) -> None:
        """Make the running set exactly ``apps`` (by name; a new version replaces the old)."""
        ...

    def status(self) -> list[AppStatus]:
        """Every app the engine runs, by name."""
        ...

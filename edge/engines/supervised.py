"""What the native engine's supervisor knows of each app version and each of its processes.

An app version (``SupervisedApp``) has its plan, its directory and one ``Instance`` per process
slot (``<service>-<replica>``): how to launch it, the process running in it (known by pid and
start time), its state, restarts and back-off. Both turn into the statuses the agent reports and
the records ``state.json`` keeps; ``restore`` fills an instance from its record when the engine
starts, adopting the process if it still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edge.engines.appdir import InstanceRecord, StateRecord
from edge.engines.base import AppStatus, InstanceState, InstanceStatus
from edge.engines.plan import Plan, Service
from edge.engines.processes import Process, poll, sweep_group
from edge.functions import PORT_FILE_ENV, startup_error_file

__all__ = ["Instance", "Launch", "SupervisedApp", "listening_port", "restore", "startup_error"]

MAX_CAUSE: Final = 500  # characters of a runtime's startup error kept in a reported cause
# The app's state is its worst instance's.
_RANK: Final = {
    InstanceState.SUCCEEDED: 0,
    InstanceState.RUNNING: 1,
    InstanceState.PENDING: 2,
    InstanceState.UNKNOWN: 3,
    InstanceState.FAILED: 4,
}


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one instance."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    log_file: Path
    job: bool  # a job's instance that exits with code 0 is done


@dataclass(slots=True)
class Instance:
    """One process slot of a service, and what the supervisor knows about it."""

    service: Service
    replica: int
    launch: Launch
    process: Process | None = None
    state: InstanceState = InstanceState.PENDING
    cause: str | None = None  # why it last stopped, or could not start
    restarts: int = 0
    started_at: float | None = None
    attempted: bool = False  # whether it was ever started (the next start is a restart)
    failures: int = 0  # consecutive, for the back-off
    due: float = 0.0  # monotonic time of the next start

    @property
    def name(self) -> str:
        return f"{self.service.name}-{self.replica}"

    def status(self) -> InstanceStatus:
        return InstanceStatus(
            name=self.name,
            state=self.state,
            pid=self.process.pid if self.process else None,
            restarts=self.restarts,
            cause=self.cause,
            started_at=self.started_at,
        )

    def record(self) -> InstanceRecord:
        return InstanceRecord(
            service=self.service.name,
            replica=self.replica,
            pid=self.process.pid if self.process else None,
            start_time=self.process.start_time if self.process else None,
            started_at=self.started_at,
            restarts=self.restarts,
            state=self.state.value,
            cause=self.cause,
        )


@dataclass(slots=True)
class SupervisedApp:
    """One app version the engine knows: run (``plan`` and ``dir`` set), or failed as a whole."""

    name: str
    version: str
    spec: dict[str, Any]
    plan: Plan | None = None
    dir: Path | None = None
    instances: list[Instance] = field(default_factory=list)
    cause: str | None = None  # why the app as a whole cannot run
    retry: bool = False  # whether applying the same version again should try again

    def status(self) -> AppStatus:
        instances = tuple(i.status() for i in self.instances)
        if self.cause is not None:
            return AppStatus(self.name, self.version, InstanceState.FAILED, instances, self.cause)
        if not instances:
            return AppStatus(self.name, self.version, InstanceState.RUNNING)
        state = max((i.state for i in instances), key=_RANK.__getitem__)
        cause = None
        if state in (InstanceState.FAILED, InstanceState.PENDING):
            cause = next((i.cause for i in instances if i.state is state and i.cause), None)
        return AppStatus(self.name, self.version, state, instances, cause)

    def record(self) -> StateRecord:
        return StateRecord(
            format=1,
            name=self.name,
            version=self.version,
            spec=self.spec,
            instances=[i.record() for i in self.instances],
        )


def listening_port(instance: Instance) -> int | None:
    """The port in the instance's port file, if its current process wrote it."""
    port_file = instance.launch.env.get(PORT_FILE_ENV)
    if not port_file or instance.process is None:
        return None
    path = Path(port_file)
    try:
        if path.stat().st_mtime < instance.process.started_at - 1.0:
            return None  # left by an earlier process
        port = int(path.read_text())
    except (OSError, ValueError):
        return None  # not listening yet
    return port if 0 < port < 65536 else None


def startup_error(instance: Instance) -> str | None:
    """Why the instance's function runtime could not start (a handler that cannot be imported),
    as its current process wrote it next to its port file; None for any other program."""
    port_file = instance.launch.env.get(PORT_FILE_ENV)
    if not port_file or instance.process is None:
        return None
    path = startup_error_file(Path(port_file))
    try:
        if path.stat().st_mtime < instance.process.started_at - 1.0:
            return None  # left by an earlier process
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return " ".join(text.split())[:MAX_CAUSE] or None


def restore(instance: Instance, saved: InstanceRecord) -> None:
    """Fill ``instance`` from its record: adopt its process if that still runs."""
    instance.attempted = True
    instance.restarts = saved["restarts"]
    instance.cause = saved["cause"]
    instance.started_at = saved["started_at"]
    if saved["state"] == InstanceState.SUCCEEDED.value:
        instance.state = InstanceState.SUCCEEDED
        return
    instance.state = InstanceState.FAILED if saved["cause"] else InstanceState.PENDING
    if saved["pid"] is None or saved["start_time"] is None:
        return  # it was waiting to be started again
    process = Process(saved["pid"], saved["start_time"], saved["started_at"] or 0.0)
    ended = poll(process)
    if ended is None:
        instance.process = process
        instance.state = InstanceState.RUNNING
        return
    sweep_group(process)
    instance.state = InstanceState.FAILED
    if ended.code is None and ended.signal is None:
        instance.cause = "exited while the agent was down"
    else:
        instance.cause = ended.describe()

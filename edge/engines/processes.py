"""Operating-system processes as the native engine sees them: start, identify, watch, signal.

A process is known by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``, in clock
ticks since boot), so a pid the kernel reuses for another program is never mistaken for ours —
neither when an agent adopts what a previous agent started, nor when it sends a signal.

Every process starts in a session (and process group) of its own, with its output appended to a
log file through a file descriptor — no pipe — so it outlives the agent. The engine reaps its own
children with ``os.waitpid(pid, WNOHANG)``; a process started by an earlier agent is not a child,
and is watched through ``/proc`` instead (its exit status is then unknown). Linux only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Exit", "Process", "poll", "signal_group", "spawn", "stop", "sweep_group"]

log = logging.getLogger(__name__)

_REAP_AFTER_KILL = 5.0  # seconds to wait for SIGKILLed processes to go away
_STOP_POLL = 0.02


@dataclass(frozen=True, slots=True)
class Process:
    """A running program: its pid and the start time that tells it apart from a reused pid."""

    pid: int
    start_time: int  # clock ticks since boot, from /proc/<pid>/stat
    started_at: float  # unix seconds


@dataclass(frozen=True, slots=True)
class Exit:
    """How a process ended; ``code`` and ``signal`` are both None when that is unknown."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> Exit:
        """The exit described by an ``os.waitpid`` status."""
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.waitstatus_to_exitcode(status))

    @property
    def succeeded(self) -> bool:
        """Whether the process is known to have exited with code 0."""
        return self.code == 0

    def describe(self) -> str:
        """A short cause, e.g. ``exited with code 2`` or ``killed by signal SIGKILL``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by signal {name}"
        if self.code is not None:
            return f"exited with code {self.code}"
        return "exited while the agent was not its parent (exit status unknown)"


class _Child(subprocess.Popen[bytes]):
    """A Popen whose child the engine reaps itself: dropping the object neither warns nor reaps."""

    def __del__(self) -> None:
        """Leave the child alone: it is meant to outlive this object (and this agent)."""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) from ``/proc/<pid>/stat``; None if no such pid."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after it do not.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_file: Path) -> Process:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_file``.

    Raises ``OSError`` when the program cannot be started (not found, not executable, no such
    working directory); ``filename`` then names what is missing.
    """
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        child = _Child(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    started_at = time.time()
    # Our child stays in /proc (as a zombie at worst) until we reap it, so its stat is there.
    stat = _stat(child.pid)
    if stat is None:  # pragma: no cover - the kernel keeps unreaped children
        raise ProcessLookupError(f"process {child.pid} vanished before it could be identified")
    return Process(pid=child.pid, start_time=stat[2], started_at=started_at)


def poll(process: Process) -> Exit | None:
    """None while ``process`` runs; how it ended once it has (reaping it if it is our child)."""
    stat = _stat(process.pid)
    if stat is None or stat[2] != process.start_time:
        return Exit()  # gone, and already reaped by someone else (or the pid was reused)
    try:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:
        # Not our child: started by an earlier agent. A zombie is dead, waiting for its parent.
        return Exit() if stat[0] in ("Z", "X") else None
    if pid == 0:
        return None
    return Exit.from_wait_status(status)


def signal_group(process: Process, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``process`` leads, if it is still that process."""
    stat = _stat(process.pid)
    if stat is None or stat[2] != process.start_time:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if stat[1] == process.pid:
            os.killpg(process.pid, sig)
        else:  # pragma: no cover - every process we start leads its own group
            os.kill(process.pid, sig)


def sweep_group(process: Process) -> None:
    """SIGKILL what is left of the group of a leader that has exited (children it left behind).

    While any member of the group lives, the kernel hands its id to no new process; so when no
    process has the leader's pid (or the leader is still there as a zombie), the group is ours.
    """
    stat = _stat(process.pid)
    if stat is not None and stat[2] != process.start_time:
        return  # the pid is another program's now, so no member of our group is left
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def stop(processes: Sequence[Process], *, grace: float) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for process in processes:
        signal_group(process, signal.SIGTERM)
    alive = list(processes)
    deadline = time.monotonic() + grace
    killed = False
    while alive:
        alive = [p for p in alive if poll(p) is None]
        if not alive:
            break
        now = time.monotonic()
        if now >= deadline:
            if killed:
                pids = ", ".join(str(p.pid) for p in alive)
                log.warning(
                    "processes %s did not exit %.1f s after SIGKILL", pids, _REAP_AFTER_KILL
                )
                break
            for process in alive:
                log.warning(
                    "process %d did not exit %.1f s after SIGTERM; killing it", process.pid, grace
                )
                signal_group(process, signal.SIGKILL)
            killed = True
            deadline = now + _REAP_AFTER_KILL
        await asyncio.sleep(_STOP_POLL)
    for process in processes:
        sweep_group(process)

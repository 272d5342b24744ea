"""Processes as the tests look at them: alive or not, and found by a marker in their environment.

A test marks the processes it starts (an app's ``OUT`` path, the fault suite's ``MARK``) so it
can find exactly its own, never by program name: other runs of the same programs may share the
machine.
"""

from __future__ import annotations

from pathlib import Path


def _state(pid: int) -> str:
    """The one-letter state of ``pid`` ("X" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    return _state(pid) not in ("Z", "X")


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (e.g. ``OUT=<path>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and alive(int(entry.name)):
            found.append(int(entry.name))
    return found

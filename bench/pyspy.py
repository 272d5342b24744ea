"""Sample our broker with py-spy during one phase, and summarise where its time went.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); the summary
gives, per function, the share of samples where it is on top of the stack (self) and anywhere in
it (inclusive). Install py-spy with ``.venv/bin/pip install py-spy``; it needs ptrace rights.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["PhaseProfiler", "summarise"]

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_LINE = re.compile(r":\d+\)$")


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PhaseProfiler:
    """`with PhaseProfiler(pid, path):` samples `pid` for the duration of the block (if enabled)."""

    def __init__(self, pid: int, output: Path, *, enabled: bool = True, rate: int = 200) -> None:
        self.pid = pid
        self.output = output
        self.enabled = enabled and _py_spy() is not None
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PhaseProfiler:
        exe = _py_spy()
        if not self.enabled or exe is None:
            return self
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(exe, "record", "--pid", str(self.pid), "--format", "raw"),
                *("--rate", str(self.rate), "--nonblocking", "--output", str(self.output)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach before the phase starts
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_TRUNK = {
    "<module>",
    "main",
    "run",
    "_run",
    "Runner.run",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
}


def _split(frame: str) -> tuple[str, list[str]] | None:
    match = re.match(r"^(?P<name>.*) \((?P<path>.*)\)$", frame)
    return None if match is None else (match["name"], match["path"].split("/"))


def _short(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (package/file.py)``."""
    split = _split(_FRAME_LINE.sub(")", frame))
    if split is None:
        return frame
    name, parts = split
    return f"{name} ({'/'.join(parts[-2:])})"


def _short_line(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``package/file.py:123 name``."""
    split = _split(frame)
    if split is None:
        return frame
    name, parts = split
    return f"{'/'.join(parts[-2:])}  {name}"


def summarise(path: Path, top: int = 15) -> str:
    """The hottest functions of a raw py-spy profile: self (by function and line), inclusive."""
    if not path.exists():
        return f"(no profile at {path})"
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        count = int(match["count"])
        raw = [
            f for f in match["stack"].split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not raw:
            continue
        frames = [_short(f) for f in raw]
        total += count
        own[frames[-1]] += count
        own_lines[_short_line(raw[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"(empty profile at {path})"

    def pct(items: list[tuple[str, int]]) -> list[str]:
        return [f"    {100 * c / total:5.1f}%  {f}" for f, c in items]

    branches = [(f, c) for f, c in inclusive.most_common() if f.split(" (")[0] not in _TRUNK]
    return "\n".join(
        [
            f"{path.name}: {total} samples",
            "  self:",
            *pct(own.most_common(top)),
            "  self, by line:",
            *pct(own_lines.most_common(max(3, top // 2))),
            "  inclusive (without the event loop's own frames):",
            *pct(branches[:top]),
        ]
    )

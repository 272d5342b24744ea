"""The ``baetyl`` command as the tests run it: in a thread of the test's process, output captured.

A package's ``run`` fixture returns ``capture(capsys)`` (after whatever environment it needs).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from management.cli import main


@dataclass(frozen=True, slots=True)
class Run:
    """What one ``baetyl`` command did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Awaitable[Run]]


def capture(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``baetyl ARGV...`` in a thread and capture what it printed."""

    async def call(*argv: str) -> Run:
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return call

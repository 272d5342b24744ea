"""Fixtures of the fault suite: a fresh MariaDB database per test, the profile, the figures.

MariaDB is expected at 127.0.0.1:3306 as root with an empty password (the ``mariadb`` fixture
of tests/conftest.py): without it the tests skip, or fail under any truthy ``CI``
(tests/support/ci.py).

The profile comes from the environment (``BAETYL_FAULTS_PROFILE=ci|long``,
``BAETYL_FAULTS_NODES``; see ``world.Profile``). Each scenario's figures go to a JSON file in
the test's tmp dir and to one line in pytest's terminal summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.scenarios import summary_line
from tests.faults.world import Profile
from tests.support.db import Database, fresh_mysql_database

FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def database(mariadb: None) -> Iterator[Database]:
    """A fresh, empty MariaDB database, dropped afterwards."""
    with fresh_mysql_database("pybaetyl_faults") as database:
        yield database


@pytest.fixture
def profile() -> Profile:
    """The CI profile unless the environment asks for another."""
    return Profile.from_env()


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Record a scenario's figures: ``tmp_path/faults-<scenario>.json`` and a summary line."""

    def record(data: dict[str, Any]) -> Path:
        path = tmp_path / f"faults-{data['scenario']}.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        line = f"{summary_line(data)} ({path})"
        request.config.stash.setdefault(FIGURES, []).append(line)
        print(line)
        return path

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures of every scenario that ran, one line each."""
    lines = terminalreporter.config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.write_sep("-", "fault suite figures")
        for line in lines:
            terminalreporter.write_line(line)

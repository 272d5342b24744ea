"""The data plane's end-to-end fixtures: the real cloud on SQLite (the data plane does not
depend on the store's backend); the agent (``agent_dir``, ``start_agent``) and ``run`` come
from tests/conftest.py, the harness from tests/dataplane/harness.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import Cli
from tests.support.cloud import Api, RunningCloud
from tests.support.db import Database, sqlite_database


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only."""
    return sqlite_database(tmp_path)


@pytest.fixture
def baetyl(run: Cli, cloud: RunningCloud, api: Api, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``run`` (a ``baetyl`` command in a thread) pointed at the cloud as namespace default."""
    monkeypatch.setenv("BAETYL_API_URL", cloud.api_url)
    monkeypatch.setenv("BAETYL_API_TOKEN", api.token)
    return run

"""The real cloud for the edge's tests (on SQLite: the edge does not care about the store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.management.conftest import api, api_for, cloud  # noqa: F401 # fixtures reused
from tests.shadow.conftest import Database


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only: activation from the edge does not depend on the store's backend."""
    path = tmp_path / "baetyl.db"
    return Database("sqlite", f"sqlite://{path}", path=path)

"""The edge's fixtures: the real cloud (tests/conftest.py) on SQLite.

A real agent (``agent_dir``, ``start_agent``) and ``run`` (a ``baetyl`` command in a thread,
captured) come from tests/conftest.py, shared with tests/dataplane/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.db import Database, sqlite_database


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only: activation from the edge does not depend on the store's backend."""
    return sqlite_database(tmp_path)

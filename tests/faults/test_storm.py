"""Reconnect storm: every node dropped at once comes back and resyncs; a node left alone keeps
getting its reports answered meanwhile. See ``scenarios.storm``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.scenarios import storm
from tests.faults.world import Profile, World
from tests.support.db import Database


@pytest.mark.slow
async def test_a_dropped_fleet_resyncs_while_the_broker_answers_others(
    tmp_path: Path,
    database: Database,
    profile: Profile,
    figures: Callable[[dict[str, Any]], Path],
) -> None:
    """All nodes but one dropped at once reconnect with the agent's back-off and resync to a
    desired change made while they were away; the one not dropped is answered within bound."""
    profile = dataclasses.replace(profile, agents=0)
    async with World(tmp_path / "run", database, profile) as world:
        result = await storm(world)
    figures(result)
    assert result["problems"] == []
    assert result["messages_lost"] == 0
    assert result["dropped"] == profile.nodes
    assert result["time_to_resync_all_s"] <= profile.storm_limit
    assert result["probe_answer_s_during"]["max"] <= profile.probe_bound
    assert result["probe_reports"] > 0

"""Convergence and no loss: a fleet through desired writes, disconnects and SIGKILLs.

N simulated nodes (mTLS, the real protocol, the agent's reconnect policy) and real edge agents
against ``baetyl up`` on MariaDB, while the API rewrites many nodes' desired state, nodes drop
and report, an agent and the cloud are SIGKILLed and restarted. See ``scenarios.convergence``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.scenarios import convergence
from tests.faults.world import Profile, World
from tests.support.db import Database


@pytest.mark.slow
async def test_every_node_converges_and_no_accepted_report_is_lost(
    tmp_path: Path,
    database: Database,
    profile: Profile,
    figures: Callable[[dict[str, Any]], Path],
) -> None:
    """After the faults every node holds the latest desired state, the API shows what each
    last reported, the agents run their desired apps, and every accepted report was stored."""
    async with World(tmp_path / "run", database, profile) as world:
        result = await convergence(world)
    figures(result)
    assert result["problems"] == []
    assert result["messages_lost"] == 0
    faults = result["faults"]
    assert faults["cloud_sigkills"] == profile.cloud_kills
    assert faults["agent_sigkills"] == profile.agent_kills
    assert faults["node_disconnects"] > 0
    assert faults["desired_writes"] > 0
    # The checks after each SIGKILL covered reports that had been accepted.
    assert all(kill["nodes_with_accepted_reports"] > 0 for kill in result["kills"])

"""The status reporter: what the engine runs, and the node itself, reported to the cloud.

Every turn of the agent's loop it reads the engine's app statuses; a change is queued at once, and
a full report (node info and stats, the node's properties) at least every heartbeat. Reports go
through the report queue (``edge.reports``): coalesced while offline, one in flight, kept in
``<state-dir>/reports.json`` across restarts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge.engines import Engine
from edge.link import CloudLink
from edge.node import node_info, node_stats
from edge.properties import NodeProperties
from edge.reports import ReportQueue
from shadow import Channel, JSONObject, ReportRequest, report_message

__all__ = ["StatusReporter"]

log = logging.getLogger(__name__)


class StatusReporter:
    """Turns the engine's statuses into reports on ``queue``, sent over ``link``."""

    def __init__(
        self,
        engine: Engine,
        queue: ReportQueue,
        properties: NodeProperties,
        link: CloudLink,
        path: Path,
    ) -> None:
        self._engine = engine
        self.queue = queue
        self._properties = properties
        self._link = link
        self._path = path
        self._last_status: list[dict[str, Any]] | None = None

    async def step(self, now: float) -> None:
        """Queue a report when something changed or a full one is due; send one if online."""
        statuses = [status.to_report() for status in self._engine.status()]
        changed = statuses != self._last_status
        if changed or self.queue.due(now):
            self._last_status = statuses
            patch: JSONObject = {
                "apps": [{"name": s["name"], "version": s["version"]} for s in statuses],
                "appstats": statuses,
            }
            if self.queue.due(now):
                patch["node"] = dict(node_info())
                patch["nodestats"] = dict(node_stats())
                patch.update(self._properties.full_patch())
                self.queue.full_reported(now)
            self.queue.put(patch)
        if self._link.connected.is_set():
            taken = self.queue.take(now)
            if taken is not None:
                request = ReportRequest(taken.patch, taken.token)
                self._link.publish(Channel.REPORT, report_message(request))

    def save(self) -> None:
        """Keep what was not accepted in reports.json: it goes out after the restart."""
        try:
            self.queue.save(self._path)
        except OSError as exc:
            log.warning("could not keep the unsent reports in %s: %s", self._path, exc)

"""PLACEHOLDER (dp-agent): dp-routes' ``edge/dataplane/router.py`` replaces this file at merge.

The interface of the data-plane contract (issue 15), doing nothing, so the agent imports and runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.dataplane.publisher import Publisher
from edge.dataplane.routes import RouteSpec

__all__ = ["Router"]


class Router:
    def __init__(
        self,
        *,
        node_id: str,
        node_name: str,
        spool_path: Path,
        function_url: str | None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._routes: list[RouteSpec] = []

    def set_routes(self, routes: Sequence[RouteSpec]) -> None:
        self._routes = list(routes)

    def set_cloud(self, publisher: Publisher | None) -> None:
        pass

    def set_local(self, publisher: Publisher | None) -> None:
        pass

    def wake(self) -> None:
        pass

    async def downlink(self, rest: str, payload: bytes) -> None:
        pass

    def stats(self) -> dict[str, dict[str, object]]:
        return {
            r.name: {"forwarded": 0, "queued": 0, "dropped": 0, "failed": 0, "lastError": None}
            for r in self._routes
        }

    async def run(self) -> None:
        await asyncio.Event().wait()

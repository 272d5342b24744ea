"""PLACEHOLDER (dp-agent): dp-routes' ``edge/dataplane/routes.py`` replaces this file at merge.

Only what ``edge.dataplane.plane`` imports, per the data-plane contract of issue 15.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RouteSpec"]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    name: str
    spec: Mapping[str, Any]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> RouteSpec:
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("A route needs a name.")
        return cls(name, spec)

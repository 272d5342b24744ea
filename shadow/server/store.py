"""Where shadows are kept: the store seam and the records that cross it.

The service keeps the shadows it serves in memory and writes every change through a store in
batches: one ``commit`` is one transaction, all or nothing. A write is conditional on the
versions the service last loaded, so two writers can never silently overwrite each other
(``StaleWrite``); a new shadow is inserted and a concurrent insert of the same node is stale too.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from shadow.document import EMPTY, Section

__all__ = ["ShadowRecord", "ShadowStore", "ShadowWrite"]


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """A node's shadow as stored: both sections and its presence."""

    node_id: str
    desired: Section = EMPTY
    reported: Section = EMPTY
    online: bool = False
    last_seen: int | None = None  # unix ms of the last connect or disconnect
    updated_at: int = 0  # unix ms of the last write


@dataclass(frozen=True, slots=True)
class ShadowWrite:
    """The new state of one shadow, conditional on what it was based on.

    ``based_on`` is ``(desired.version, reported.version)`` of the stored row the change was
    computed from, or None if the shadow is new and must be inserted.
    """

    record: ShadowRecord
    based_on: tuple[int, int] | None


class ShadowStore(Protocol):
    """Persistence of shadows (SQLite or MySQL/MariaDB through tortoise-orm)."""

    async def load(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        """The stored shadows of ``node_ids``; nodes without one are absent from the result."""
        ...

    async def commit(self, writes: Sequence[ShadowWrite]) -> None:
        """Write all of ``writes`` in one transaction, durably, or none of them.

        Raises ``StaleWrite`` (naming the nodes) if a row's versions are not ``based_on`` or a
        new shadow already exists, and ``StoreError`` if the database fails; in both cases
        nothing was written.
        """
        ...

    async def node_ids(self) -> list[str]:
        """Every node id with a stored shadow, sorted."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers now (for readiness)."""
        ...

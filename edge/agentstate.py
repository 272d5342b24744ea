"""What the agent knows across restarts, kept in ``<state-dir>/agent.json`` (0600).

The desired document and its version, every spec fetched (``edge.specbook``) and what the
engine was last given. It is written whole, through a temporary file and a rename, at every
change; a write that fails (a full disk) is logged, and the state kept in memory is written at
the next change or resync. A file written for an earlier activation of the node is not taken.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edge.specbook import SpecBook
from shadow import DesiredFollower, JSONObject

__all__ = ["AgentState"]

log = logging.getLogger(__name__)


class AgentState:
    """The agent's persisted state; ``load`` it, change its fields, ``save`` it."""

    def __init__(self, path: Path, activation: str) -> None:
        self.path = path
        self.activation = activation  # this activation's id; written with the state
        self.follower = DesiredFollower()
        self.desired: JSONObject = {}
        self.specs = SpecBook()
        # What the engine was last given, by (name, version); None: not known (an agent.json
        # from before it was kept), so nothing is applied while specs are missing.
        self.applied: list[tuple[str, str]] | None = None

    def load(self) -> bool:
        """Load what the agent kept; False if it belongs to an earlier activation.

        A node activated again (as another node, or of a cloud whose shadows started over)
        must not keep the desired version it had: it would ignore every desired state up to it.
        """
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.applied = []  # a new node: nothing applied yet
            return True
        except ValueError:
            log.warning("%s is damaged; starting from the cloud's state", self.path)
            return True
        kept = data.get("activation")
        if kept is not None and kept != self.activation:
            log.info(
                "the node was activated again since %s was written: its desired state and "
                "unsent reports are dropped; starting from the cloud's",
                self.path,
            )
            self.applied = []  # what the engine runs for the earlier activation is not wanted
            return False
        self.follower = DesiredFollower(int(data.get("version", 0)))
        self.desired = dict(data.get("desired", {}))
        self.specs = SpecBook(data.get("specs", {}))
        applied = data.get("applied")
        if isinstance(applied, list):
            self.applied = [(str(name), str(version)) for name, version in applied]
        return True

    def save(self) -> None:
        """Write the state; a failure is logged (see the module docstring)."""
        try:
            self._write()
        except OSError as exc:
            log.warning("could not save the agent's state in %s: %s", self.path, exc)

    def _write(self) -> None:
        data = {
            "activation": self.activation,
            "version": self.follower.version,
            "desired": self.desired,
            "specs": self.specs.to_json(),
            "applied": self.applied,
        }
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.path)

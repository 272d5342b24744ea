"""A session's connection state, without a state-machine library object per session.

amqtt gives every session a ``transitions.Machine`` (about 16 KiB and 240 objects each: a tenth
of a node's memory at fleet scale) for three states and two triggers. This is the same
behaviour in a few slots: the same states, the same triggers, the same error on a transition
that is not allowed, the same connect/disconnect timestamps.
"""

from __future__ import annotations

import time
from typing import Any

from transitions import MachineError

__all__ = ["SessionStates"]

_CONNECT_FROM = frozenset({"new", "disconnected"})
_DISCONNECT_FROM = frozenset({"new", "connected", "disconnected"})


class SessionStates:
    """``session.transitions`` for amqtt's Session: new → connected ⇄ disconnected."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Any, state: str = "new") -> None:
        self._session = session
        self.state = state

    def connect(self) -> None:
        if self.state not in _CONNECT_FROM:
            raise MachineError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self._session.last_connect_time = int(time.time())
        self._session.last_disconnect_time = None

    def disconnect(self) -> None:
        if self.state not in _DISCONNECT_FROM:  # pragma: no cover - every state may disconnect
            raise MachineError(f"Can't trigger event disconnect from state {self.state}!")
        self.state = "disconnected"
        self._session.last_disconnect_time = int(time.time())

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

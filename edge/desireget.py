"""The outstanding ``desire/get``: its token, and when to ask again.

After every connect the agent asks for the full desired document. An answer that does not come
within ``ANSWER_TIMEOUT`` (lost with a session, a cloud restarting) is asked for again, each wait
twice the last up to 8 times the first; a refusal (429 busy, 500 the store away) is asked again
after a shorter back-off. Each wait is jittered, so a fleet that reconnected together does not
ask again together.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from edge.specbook import retry_delay
from shadow import DesireMessage, GetRequest

__all__ = ["ANSWER_TIMEOUT", "DesireGet"]

ANSWER_TIMEOUT = 30.0
"""Seconds without an answer after which a ``desire/get`` is sent again: the first wait, then
doubling to 8 times as long, each jittered by up to half again (a fleet that reconnected
together does not ask again together)."""


@dataclass(slots=True)
class _Asked:
    token: str
    version: int  # the desired version the agent had when it asked
    attempts: int  # how many were sent since the last answer
    resend_at: float  # monotonic


class DesireGet:
    """The ``desire/get`` awaiting its answer, if any."""

    def __init__(self) -> None:
        self._asked: _Asked | None = None

    def ask(self, version: int, now: float) -> GetRequest:
        """A new request, at the desired ``version`` the agent has; replaces any outstanding."""
        attempts = self._asked.attempts if self._asked is not None else 0
        token = f"get-{uuid.uuid4().hex[:12]}"
        wait = ANSWER_TIMEOUT * min(2**attempts, 8) * (1.0 + random.random() / 2)  # noqa: S311
        self._asked = _Asked(token, version, attempts + 1, now + wait)
        return GetRequest(token)

    def due(self, now: float) -> bool:
        """Whether the outstanding request went unanswered long enough to ask again."""
        return self._asked is not None and now >= self._asked.resend_at

    def answered(self, desire: DesireMessage) -> int | None:
        """If ``desire`` answers the outstanding request: the version asked at (it is over)."""
        asked = self._asked
        if asked is None or desire.client_token != asked.token:
            return None
        self._asked = None
        return asked.version

    def refused(self, now: float) -> None:
        """Busy (429) or the store away (500): ask again after a back-off, not at once."""
        if self._asked is not None:
            retry = now + retry_delay(self._asked.attempts - 1)
            self._asked.resend_at = min(self._asked.resend_at, retry)

    def reset(self) -> None:
        """Forget the outstanding request (a new session asks afresh)."""
        self._asked = None

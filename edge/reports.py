"""The report queue: reported-state patches coalesced while they wait, one report in flight.

The agent ``put``\\ s a patch of the reported state whenever something changes and ``take``\\ s a
report to publish when it can; the cloud's answer, matched by ``clientToken``, settles it. While
the node is offline (or backing off) later patches are merged into the waiting one, latest wins,
so a node that was offline for an hour sends one report, not thousands.

Patches are RFC 7386 merge patches, and two of them cannot always be folded into one: after
``{"a": null}`` (or ``{"a": 1}``), a later ``{"a": {"b": 1}}`` makes ``a`` exactly ``{"b": 1}``,
and no single merge patch does that to a state where ``a`` holds other keys. :func:`merge_patches`
returns ``None`` for such a pair, and the queue keeps them as consecutive reports, sent in order.
So the queue holds a short list (almost always one patch, or none), and applying its reports in
order always gives the state that applying every ``put`` in order gives.

One report is in flight at a time (patches do not commute, and the cloud limits a node to 10
requests per second anyway). Its fate:

- ``accepted``: dropped;
- no answer within ``answer_timeout``, or ``on_disconnect``: put back in front of the newer
  patches (merged under them where it can be) and sent again with a new token. The cloud may have
  applied it already; a merge patch applied twice gives the same state, so that is harmless;
- rejected 409 (the report named a stale ``version``): put back, and a full report is due;
- rejected 429, or 5xx (the store could not take it): put back, and nothing is sent until an
  exponential, jittered back-off has passed;
- rejected 400, 413 or any other code: dropped with a warning, as sending it again cannot work.

Everything here is synchronous and cheap; times are seconds on the ``time.monotonic()`` clock,
passed in as ``now`` (tests pass their own; ``take`` and ``rejected`` read the clock only when
not given one), and the agent owns the timers. The queue can be saved to a JSON file and loaded
at the next start, so changes not yet accepted survive an agent restart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shadow import JSONObject

__all__ = ["Report", "ReportQueue", "ReportSettings", "merge_patches"]

log = logging.getLogger(__name__)

_FILE_FORMAT = 1


def merge_patches(first: JSONObject, second: JSONObject) -> JSONObject | None:
    """The one merge patch that does what ``first`` then ``second`` do, or ``None`` if none does.

    For every state ``s``: ``merge(s, merge_patches(a, b)) == merge(merge(s, a), b)``. A later
    ``null`` is kept (it deletes), objects in both are folded key by key, and any other later
    value replaces the earlier one. There is no single patch when ``second`` has an object where
    ``first`` has ``null``, a scalar or an array: the result must then be exactly that object,
    whatever keys the state held there. The inputs are not mutated; the result may share
    sub-objects with them.
    """
    result = dict(first)
    for key, value in second.items():
        if isinstance(value, dict) and key in first:
            earlier = first[key]
            if not isinstance(earlier, dict):
                return None
            folded = merge_patches(earlier, value)
            if folded is None:
                return None
            result[key] = folded
        else:
            result[key] = value
    return result


def _copy(patch: object) -> JSONObject:
    """A private copy of ``patch``, checked to be a JSON object JSON can carry (no NaN)."""
    if not isinstance(patch, dict):
        raise TypeError(f"A report patch must be a dict, not {type(patch).__name__}.")
    try:
        text = json.dumps(patch, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise ValueError(
            "A report patch holds NaN or an infinity, which JSON cannot carry; report a finite "
            "number or null."
        ) from None
    copied: JSONObject = json.loads(text)
    return copied


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class Report(NamedTuple):
    """A report to publish: ``{"clientToken": token, "reported": patch}``.

    The patch is shared with the queue: encode it, do not change it.
    """

    token: str
    patch: JSONObject


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """Timers of the report queue, in seconds; ``jitter`` is a fraction (0.1 is ±10 %)."""

    heartbeat: float = 300.0
    """How often a full report is due, jittered so that a fleet does not report in step."""
    jitter: float = 0.1
    answer_timeout: float = 30.0
    """How long a report may go unanswered before it is sent again."""
    backoff_initial: float = 1.0
    """The first wait after a 429 or 5xx; it doubles with each refusal in a row."""
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        for name in ("heartbeat", "answer_timeout", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ReportSettings.{name} must be a positive number of seconds.")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            raise ValueError("ReportSettings.jitter must be a fraction from 0 up to (not) 1.")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("ReportSettings.backoff_max must be at least backoff_initial.")


@dataclass(frozen=True, slots=True)
class _InFlight:
    token: str
    patch: JSONObject
    sent_at: float


class ReportQueue:
    """Reported-state patches waiting to be sent, coalesced latest-wins; one report in flight."""

    def __init__(
        self,
        settings: ReportSettings | None = None,
        *,
        rng: random.Random | None = None,
        pending: Iterable[JSONObject] = (),
    ) -> None:
        self.settings = settings or ReportSettings()
        # Jitter and token prefixes need no secrecy; a seeded Random makes tests repeatable.
        self._rng = rng or random.Random()  # noqa: S311
        self._prefix = f"{self._rng.getrandbits(32):08x}"
        self._counter = 0
        self._pending: list[JSONObject] = []
        self._in_flight: _InFlight | None = None
        self._retry_at = -math.inf
        self._refusals = 0
        self._full_needed = True
        self._next_full_at = -math.inf
        for patch in pending:
            self.put(patch)

    # -- state -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of reports waiting to be sent (the one in flight not counted)."""
        return len(self._pending)

    @property
    def pending(self) -> tuple[JSONObject, ...]:
        """The patches waiting to be sent, in order; do not change them."""
        return tuple(self._pending)

    @property
    def in_flight(self) -> Report | None:
        """The report sent and not answered yet."""
        flight = self._in_flight
        return None if flight is None else Report(flight.token, flight.patch)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is in flight."""
        return not self._pending and self._in_flight is None

    def wake_at(self) -> float | None:
        """When :meth:`take` may next return a report (or give up waiting for an answer).

        ``None`` when nothing waits; a time in the past when a report can go now.
        """
        if self._in_flight is not None:
            return self._in_flight.sent_at + self.settings.answer_timeout
        if not self._pending:
            return None
        return self._retry_at

    # -- the agent's side ------------------------------------------------------------------------

    def put(self, patch: JSONObject) -> None:
        """Queue a patch of the reported state, merged into the waiting one when it can be.

        The patch is copied (the caller may reuse it); an empty patch changes nothing and is
        ignored. Raises ``TypeError`` or ``ValueError`` for what JSON cannot carry (NaN, sets).
        """
        copied = _copy(patch)
        if not copied:
            return
        if self._pending:
            folded = merge_patches(self._pending[-1], copied)
            if folded is not None:
                self._pending[-1] = folded
                return
        self._pending.append(copied)

    def take(self, now: float | None = None) -> Report | None:
        """The next report to publish, now in flight; ``None`` if none may go now.

        Nothing goes while a report is in flight, while backing off after a 429 or 5xx, or when
        nothing waits. A report unanswered for ``answer_timeout`` is put back and sent again
        under a new token (a late answer to the old token is then ignored).
        """
        if now is None:
            now = time.monotonic()
        flight = self._in_flight
        if flight is not None:
            if now - flight.sent_at < self.settings.answer_timeout:
                return None
            log.warning(
                "Report %s got no answer in %.0f s; sending it again.",
                flight.token,
                self.settings.answer_timeout,
            )
            self._in_flight = None
            self._requeue(flight.patch)
        if not self._pending or now < self._retry_at:
            return None
        patch = self._pending.pop(0)
        self._counter += 1
        token = f"r-{self._prefix}-{self._counter}"
        self._in_flight = _InFlight(token, patch, now)
        return Report(token, patch)

    def accepted(self, token: str) -> bool:
        """Settle the report in flight with ``token`` as stored; False for any other token."""
        flight = self._in_flight
        if flight is None or flight.token != token:
            return False
        self._in_flight = None
        self._refusals = 0
        return True

    def rejected(
        self, token: str, code: int, *, now: float | None = None, message: str = ""
    ) -> bool:
        """Settle the report in flight with ``token`` as refused with ``code``.

        Returns False (and changes nothing) for any other token. ``message`` is the cloud's
        explanation, logged when the report is dropped; ``now`` starts a back-off.
        """
        flight = self._in_flight
        if flight is None or flight.token != token:
            return False
        self._in_flight = None
        if code == 409:
            self._requeue(flight.patch)
            self._full_needed = True
        elif code == 429 or 500 <= code <= 599:
            self._requeue(flight.patch)
            self._refusals += 1
            if now is None:
                now = time.monotonic()
            delay = min(
                self.settings.backoff_max,
                self.settings.backoff_initial * 2 ** min(self._refusals - 1, 30),
            )
            # Equal jitter: between half the delay and the whole of it.
            self._retry_at = now + delay * (0.5 + 0.5 * self._rng.random())
            log.info("Report %s refused with %d; retrying in %.1f s.", token, code, delay)
        else:
            log.warning(
                "Report %s refused with %d and dropped, as sending it again cannot work: %s",
                token,
                code,
                message or "(no message)",
            )
        return True

    def on_disconnect(self) -> None:
        """The connection dropped: the report in flight goes back in front of newer patches.

        A full report is due too, as the protocol asks for one after every reconnect.
        """
        flight = self._in_flight
        if flight is not None:
            self._in_flight = None
            self._requeue(flight.patch)
        self._full_needed = True

    def _requeue(self, patch: JSONObject) -> None:
        """Put ``patch`` back before the waiting patches, folded under the first when possible."""
        if self._pending:
            folded = merge_patches(patch, self._pending[0])
            if folded is not None:
                self._pending[0] = folded
                return
        self._pending.insert(0, patch)

    # -- full reports ----------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether a full report is due: at start, after a reconnect or a 409, and every heartbeat.

        The agent then ``put``\\ s everything it reports (node, stats, apps) and calls
        :meth:`full_reported`.
        """
        return self._full_needed or now >= self._next_full_at

    @property
    def next_full_at(self) -> float:
        """When the next periodic full report is due (``-inf`` before the first one)."""
        return self._next_full_at

    def full_reported(self, now: float) -> None:
        """A full report was queued at ``now``; the next is due one jittered heartbeat later."""
        jitter = self.settings.jitter
        spread = 1 - jitter + 2 * jitter * self._rng.random()
        self._full_needed = False
        self._next_full_at = now + self.settings.heartbeat * spread

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write what is not yet accepted to ``path`` atomically (0600, fsynced, renamed).

        The report in flight is saved as waiting: after a restart it is sent again.
        """
        pending = list(self._pending)
        if self._in_flight is not None:
            folded = merge_patches(self._in_flight.patch, pending[0]) if pending else None
            if folded is not None:
                pending[0] = folded
            else:
                pending.insert(0, self._in_flight.patch)
        text = json.dumps(
            {"format": _FILE_FORMAT, "pending": pending}, allow_nan=False, separators=(",", ":")
        )
        directory = path.parent
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(
        cls,
        path: Path,
        settings: ReportSettings | None = None,
        *,
        rng: random.Random | None = None,
    ) -> ReportQueue:
        """A queue holding the patches :meth:`save` wrote to ``path``; empty if there is no file.

        A file that cannot be read or is not one :meth:`save` wrote is logged and ignored: the
        first report after a start is a full one, which restores all but deletions.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(settings, rng=rng)
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("Cannot read the saved reports in %s (%s); starting empty.", path, exc)
            return cls(settings, rng=rng)
        try:
            data = json.loads(text, parse_constant=_reject_constant)
            if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
                raise ValueError(f"not a format {_FILE_FORMAT} report file")
            pending = data.get("pending")
            if not isinstance(pending, list) or not all(isinstance(p, dict) for p in pending):
                raise ValueError("'pending' is not a list of objects")
            # Patches are put back as saved: adjacent ones could not be folded when saved.
            queue = cls(settings, rng=rng)
            queue._pending = [_copy(patch) for patch in pending if patch]
        except (ValueError, TypeError, RecursionError) as exc:
            log.warning("Ignoring the saved reports in %s: %s; starting empty.", path, exc)
            return cls(settings, rng=rng)
        return queue

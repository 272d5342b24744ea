"""The shadow service: each node's desired and reported state, kept, versioned and pushed.

Every input (a node's message, a desired write from the API, a presence change) becomes one
operation in a single queue; one writer task takes what has queued as a batch, applies the batch
in arrival order to the shadows in memory, writes the changed shadows in **one transaction**,
and only then sends the answers. So:

* a burst of reports is a handful of transactions, not a burst of them (group commit: while one
  batch commits, the next one gathers);
* ``report/accepted`` is sent only for what is durable: a report answered ``accepted`` survives
  a crash of this process the moment after;
* answers to one node leave in the order its requests came in;
* a write that names a stale version is refused (409) and changes nothing.

If the store fails, the batch's writes are refused with 500 and nothing in memory changes; if
another writer changed a shadow underneath (another replica), the batch is applied again once on
fresh rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from shadow import codec
from shadow.codec import Encoding
from shadow.document import JSONObject, Limits, Section, delta
from shadow.envelopes import (
    ResourceKind,
    accepted,
    client_token_of,
    delta_message,
    desire_message,
    parse_get,
    parse_report,
    parse_resource_get,
    rejected,
    resource_message,
)
from shadow.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RequestError,
    StaleWrite,
    StoreError,
    TooManyRequests,
    Unavailable,
)
from shadow.server.bus import Bus, Denied, Presence
from shadow.server.stats import RequestKind, ShadowStats, StoreOperation
from shadow.server.store import ShadowRecord, ShadowStore, ShadowWrite
from shadow.settings import ShadowSettings
from shadow.topics import UPSTREAM, Channel, parse, subscription_filter, topic, valid_node_id

__all__ = ["DesiredWrite", "NoResources", "ResourceSource", "ShadowService"]

log = logging.getLogger(__name__)

# Replicas on a shared store store a node's presence once: they hear it within this much.
_PRESENCE_SLACK_MS = 5000

_REJECTED = {
    Channel.REPORT: Channel.REPORT_REJECTED,
    Channel.DESIRE_GET: Channel.DESIRE_REJECTED,
    Channel.RESOURCE_GET: Channel.RESOURCE_REJECTED,
}


class ResourceSource(Protocol):
    """Where app, config and secret specs come from (the management API's store)."""

    async def resource(
        self, node_id: str, kind: ResourceKind, name: str, version: str
    ) -> JSONObject | None:
        """The spec, or None if it does not exist or ``node_id`` may not see it."""
        ...


class NoResources:
    """A source without resources: every ``resource/get`` is answered 404."""

    async def resource(
        self, node_id: str, kind: ResourceKind, name: str, version: str
    ) -> JSONObject | None:
        return None


@dataclass(frozen=True, slots=True)
class DesiredWrite:
    """A change of one node's desired state: a merge patch, or the whole state if ``replace``.

    ``version``, if given, must be the node's current desired version (else 409).
    """

    node_id: str
    state: JSONObject
    replace: bool = False
    version: int | None = None


# -- operations in the queue -----------------------------------------------------------------------


@dataclass(slots=True)
class _Message:
    node_id: str
    channel: Channel
    payload: bytes
    refused: RequestError | None = None
    at: float = field(default_factory=time.monotonic)  # arrival, for the latency


@dataclass(slots=True)
class _Write:
    node_id: str
    change: DesiredWrite
    future: asyncio.Future[Section]
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Presence:
    node_id: str
    online: bool
    at_ms: int


@dataclass(slots=True)
class _Read:
    node_id: str
    future: asyncio.Future[ShadowRecord]
    at: float = field(default_factory=time.monotonic)


_Op = _Message | _Write | _Presence | _Read


@dataclass(slots=True)
class _Entry:
    """A shadow in memory: the stored record and the versions the store has for it."""

    record: ShadowRecord
    based_on: tuple[int, int] | None  # None: not stored yet
    encoding: Encoding = Encoding.JSON


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Outcome:
    """What applying a batch produced: new records, answers to send, futures to settle."""

    changed: dict[str, ShadowRecord] = field(default_factory=dict)
    answers: list[tuple[str, dict[str, Any], Encoding]] = field(default_factory=list)
    pushes: dict[str, int] = field(default_factory=dict)  # node -> index of its desire push
    settle: list[tuple[asyncio.Future[Any], Any]] = field(default_factory=list)
    wrote: bool = False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _encode(message: dict[str, Any], encoding: Encoding) -> bytes:
    """Encode an answer; a desire push in JSON reuses its state's JSON from the write."""
    desired = message.get("desired")
    if encoding is Encoding.JSON and isinstance(desired, _Encoded):
        rest = {k: v for k, v in message.items() if k != "desired"}
        head = codec.encode(rest, Encoding.JSON)  # '{...}' without desired
        return head[:-1] + b',"desired":' + desired.text.encode() + b"}"
    if isinstance(desired, _Encoded):
        message = {**message, "desired": desired.state}
    return codec.encode(message, encoding)


class _Encoded:
    """A desired state whose compact JSON is known (from the write that produced it)."""

    __slots__ = ("state", "text")

    def __init__(self, state: dict[str, Any], text: str) -> None:
        self.state = state
        self.text = text


class ShadowService:
    """Keeps every node's shadow, answers its requests and pushes its desired state."""

    def __init__(
        self,
        bus: Bus,
        store: ShadowStore,
        settings: ShadowSettings | None = None,
        *,
        resources: ResourceSource | None = None,
        clock: Callable[[], int] = _now_ms,
        shared_store: bool = False,
    ) -> None:
        self._bus = bus
        # Other replicas write the same store: read every batch's shadows afresh before applying
        # it (one SELECT per batch), so no answer comes from a stale copy.
        self._shared_store = shared_store
        self._store = store
        self._settings = settings or ShadowSettings()
        self._limits = self._settings.limits
        self._resources = resources or NoResources()
        self._clock = clock
        self._queue: deque[_Op] = deque()
        self._wakeup = asyncio.Event()
        self._cache: dict[str, _Entry] = {}
        self._connections: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = ShadowStats()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._writer = asyncio.create_task(self._write_loop(), name="shadow-writer")
        for channel in UPSTREAM:
            self._unsubscribe.append(
                self._bus.subscribe(subscription_filter(channel), self._on_message)
            )
        self._unsubscribe.append(self._bus.on_presence(self._on_presence))
        self._unsubscribe.append(self._bus.on_denied(self._on_denied))
        log.info("shadow service started")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for unsubscribe in reversed(self._unsubscribe):
            unsubscribe()
        self._unsubscribe.clear()
        self._closing = True  # the writer finishes what is queued, then stops
        self._wakeup.set()
        if self._writer is not None:
            try:
                await self._writer
            finally:
                self._writer = None

    # -- the Python interface (used by the management API) -----------------------------------------

    async def write_desired(self, change: DesiredWrite) -> Section:
        """Apply one desired change; returns the new desired section once it is durable.

        Raises ``Conflict`` (stale version), ``BadRequest``/``TooLarge`` (invalid state) or
        ``Unavailable`` (the store failed; nothing changed).
        """
        (result,) = await self.write_desired_many([change])
        if isinstance(result, RequestError):
            raise result
        return result

    async def update_desired(
        self, node_id: str, patch: JSONObject, *, version: int | None = None
    ) -> Section:
        """Merge ``patch`` into the node's desired state (RFC 7386)."""
        return await self.write_desired(DesiredWrite(node_id, patch, False, version))

    async def replace_desired(
        self, node_id: str, state: JSONObject, *, version: int | None = None
    ) -> Section:
        """Replace the node's desired state with ``state``."""
        return await self.write_desired(DesiredWrite(node_id, state, True, version))

    async def write_desired_many(
        self, changes: Sequence[DesiredWrite]
    ) -> list[Section | RequestError]:
        """Apply many desired changes in as few transactions as the batch size allows.

        Returns, per change, the new desired section or the error that refused it.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Section]] = []
        for change in changes:
            if not valid_node_id(change.node_id):
                future: asyncio.Future[Section] = loop.create_future()
                future.set_exception(BadRequest(f"{change.node_id!r} is not a node id."))
            else:
                future = loop.create_future()
                self.stats.requests[RequestKind.WRITE] += 1
                self._enqueue(_Write(change.node_id, change, future))
            futures.append(future)
        results = await asyncio.gather(*futures, return_exceptions=True)
        out: list[Section | RequestError] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, RequestError):
                raise result
            out.append(result)
        return out

    async def get(self, node_id: str) -> ShadowRecord:
        """The node's shadow as it is now (an empty one if it has none yet)."""
        if not valid_node_id(node_id):
            raise BadRequest(f"{node_id!r} is not a node id.")
        future: asyncio.Future[ShadowRecord] = asyncio.get_running_loop().create_future()
        self.stats.requests[RequestKind.READ] += 1
        self._enqueue(_Read(node_id, future))
        return await future

    async def stored(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        """The shadows of ``node_ids`` as stored now (absent: none yet), read straight from the
        store in as few queries as it takes, not through the queue: for a bulk check (the
        cloud's reconciliation at start) while the nodes' own requests fill the queue. Every
        write is committed before it is answered, so nothing newer exists elsewhere."""
        for node_id in node_ids:
            if not valid_node_id(node_id):
                raise BadRequest(f"{node_id!r} is not a node id.")
        return await self._store.load(node_ids)

    async def node_ids(self) -> list[str]:
        """Every node id with a stored shadow, sorted (straight from the store, like
        ``stored``)."""
        return await self._store.node_ids()

    @property
    def queue_depth(self) -> int:
        """Operations waiting for the writer."""
        return len(self._queue)

    @property
    def cached(self) -> int:
        """Shadows held in memory."""
        return len(self._cache)

    @property
    def bus_connected(self) -> bool:
        """Whether the bus carries messages now (False while an external broker is away)."""
        return self._bus.connected

    @property
    def shared_store(self) -> bool:
        """Whether other replicas write the same store."""
        return self._shared_store

    @property
    def limits(self) -> Limits:
        """The limits every desired or reported section must keep."""
        return self._limits

    def online(self, node_id: str) -> bool:
        """Whether the node has a live connection to the broker now."""
        return self._connections.get(node_id, 0) > 0

    # -- intake (synchronous: called while the broker routes) --------------------------------------

    def _enqueue(self, op: _Op) -> None:
        if self._closing and not isinstance(op, _Presence):
            if isinstance(op, _Write | _Read) and not op.future.done():
                op.future.set_exception(Unavailable("The shadow service is stopping; retry."))
            return
        self._queue.append(op)
        self._wakeup.set()

    def _on_message(self, name: str, payload: bytes) -> None:
        parsed = parse(name)
        if parsed is None:  # our filters match only "$baetyl/node/<id>/<upstream channel>"
            log.warning("ignored a message to %s: not a node's request topic", name)
            return
        node_id, channel = parsed
        stats = self.stats
        stats.requests[RequestKind(channel.value)] += 1
        refused: RequestError | None = None
        if not self._take_token(node_id):
            stats.throttled["rate"] += 1
            refused = TooManyRequests(
                f"node {node_id} sends more than {self._settings.report_rate:g} requests per "
                "second; slow down and retry this one later."
            )
        elif len(self._queue) >= self._settings.max_queue:
            stats.throttled["overload"] += 1
            refused = TooManyRequests("The shadow service is overloaded; retry in a few seconds.")
            self._answer_now(node_id, channel, payload, refused)
            return
        self._enqueue(_Message(node_id, channel, payload, refused))

    def _on_presence(self, event: Presence) -> None:
        count = self._connections.get(event.node_id, 0) + (1 if event.online else -1)
        if count > 0:
            self._connections[event.node_id] = count
        else:
            self._connections.pop(event.node_id, None)
        self._enqueue(_Presence(event.node_id, count > 0, event.at_ms))

    def _on_denied(self, event: Denied) -> None:
        # A node published where it may not: say so on its own rejected topic (rate limited).
        if not valid_node_id(event.node_id) or not self._take_token(event.node_id):
            return
        error = Forbidden(
            f"node {event.node_id} may not publish to {event.topic!r}; a node publishes only "
            f"to $baetyl/node/{event.node_id}/report, desire/get, resource/get and presence."
        )
        self._enqueue(_Message(event.node_id, Channel.REPORT, b"", error))

    def _take_token(self, node_id: str) -> bool:
        now = time.monotonic()
        bucket = self._buckets.get(node_id)
        burst = float(self._settings.report_burst)
        if bucket is None:
            bucket = self._buckets[node_id] = _Bucket(burst, now)
        else:
            bucket.tokens = min(
                burst, bucket.tokens + (now - bucket.at) * self._settings.report_rate
            )
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _answer_now(
        self, node_id: str, channel: Channel, payload: bytes, error: RequestError
    ) -> None:
        encoding = Encoding.JSON
        with contextlib.suppress(BadRequest):
            encoding = codec.sniff(payload)
        message = rejected(error, None, self._clock())
        self._bus.publish(topic(node_id, _REJECTED[channel]), codec.encode(message, encoding))

    # -- the writer --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = [
                    self._queue.popleft()
                    for _ in range(min(len(self._queue), self._settings.max_batch))
                ]
                try:
                    await self._process(batch)
                except Exception:
                    log.exception("the shadow writer failed on a batch of %d", len(batch))
                    self._fail(batch, Unavailable("The shadow service failed; retry."))
                now = time.monotonic()
                latency = self.stats.latency
                for op in batch:
                    if not isinstance(op, _Presence):
                        latency.observe(now - op.at)
            if self._closing and not self._queue:
                return

    @staticmethod
    def _fail(batch: list[_Op], error: RequestError) -> None:
        for op in batch:
            if isinstance(op, _Write | _Read) and not op.future.done():
                op.future.set_exception(error)

    async def _process(self, batch: list[_Op]) -> None:
        # Look up the batch's nodes, not the cache: set - dict.keys() walks the whole cache.
        cache = self._cache
        if self._shared_store:
            missing = list(dict.fromkeys(op.node_id for op in batch))
        else:
            missing = [n for n in dict.fromkeys(op.node_id for op in batch) if n not in cache]
        if missing:
            try:
                await self._load(missing, refresh=self._shared_store)
            except StoreError as exc:
                self.stats.store_errors[StoreOperation.LOAD] += 1
                log.error("cannot load %d shadows: %s", len(missing), exc)
                outcome = await self._apply(batch, writable=False, unknown=set(missing))
                self._deliver(outcome)
                return
        for attempt in (1, 2):
            outcome = await self._apply(batch, writable=True)
            if not outcome.changed:
                self._deliver(outcome)
                return
            writes = [
                ShadowWrite(record, self._cache[node_id].based_on)
                for node_id, record in outcome.changed.items()
            ]
            try:
                await self._store.commit(writes)
            except StaleWrite as exc:
                self.stats.store_errors[StoreOperation.CONFLICT] += 1
                log.warning("%s (attempt %d)", exc, attempt)
                if attempt == 1:
                    try:
                        await self._load(exc.node_ids, refresh=True)
                    except StoreError:
                        self.stats.store_errors[StoreOperation.LOAD] += 1
                        break
                    continue
                break
            except StoreError as exc:
                self.stats.store_errors[StoreOperation.COMMIT] += 1
                log.error("cannot store %d shadows: %s", len(writes), exc)
                break
            for node_id, record in outcome.changed.items():
                entry = self._cache[node_id]
                entry.record = record
                entry.based_on = (record.desired.version, record.reported.version)
            self._deliver(outcome)
            return
        # The writes did not happen: refuse them, answer the reads from what is stored.
        self._deliver(await self._apply(batch, writable=False))

    async def _load(self, node_ids: list[str], *, refresh: bool = False) -> None:
        loaded = await self._store.load(node_ids)
        for node_id in node_ids:
            record = loaded.get(node_id)
            old = self._cache.get(node_id)
            encoding = old.encoding if old is not None else Encoding.JSON
            if record is None:
                if refresh:
                    self._cache.pop(node_id, None)
                    continue
                record = ShadowRecord(node_id)
                self._cache[node_id] = _Entry(record, None, encoding)
            else:
                based_on = (record.desired.version, record.reported.version)
                self._cache[node_id] = _Entry(record, based_on, encoding)
        if refresh:  # a node whose row vanished is reloaded as new
            for node_id in node_ids:
                self._cache.setdefault(node_id, _Entry(ShadowRecord(node_id), None))

    def _deliver(self, outcome: _Outcome) -> None:
        for name, message, encoding in outcome.answers:
            self._bus.publish(name, _encode(message, encoding))
        for future, result in outcome.settle:
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    # -- applying a batch --------------------------------------------------------------------------

    async def _apply(
        self, batch: list[_Op], *, writable: bool, unknown: set[str] | None = None
    ) -> _Outcome:
        """Apply ``batch`` in order to copies of the shadows; the cache is left untouched."""
        out = _Outcome()
        now = self._clock()
        unavailable = Unavailable(
            "The shadow store is unavailable; nothing was changed. Retry in a few seconds."
        )
        for op in batch:
            if unknown is not None and op.node_id in unknown:
                self._refuse_unknown(op, out, unavailable, now)
                continue
            entry = self._cache[op.node_id]
            current = out.changed.get(op.node_id, entry.record)
            if isinstance(op, _Message):
                await self._apply_message(op, entry, current, out, now, writable, unavailable)
            elif isinstance(op, _Write):
                self._apply_write(op, entry, current, out, now, writable, unavailable)
            elif isinstance(op, _Presence):
                if writable and self._presence_changes(current, op):
                    out.changed[op.node_id] = dataclasses.replace(
                        current, online=op.online, last_seen=op.at_ms
                    )
            else:
                live = self.online(op.node_id)
                out.settle.append((op.future, dataclasses.replace(current, online=live)))
        return out

    def _presence_changes(self, current: ShadowRecord, op: _Presence) -> bool:
        if current.online != op.online:
            return True
        if self._shared_store:
            # Every replica hears every presence message: the first to store it wins, the
            # others (a few milliseconds later) do not write it again.
            seen = current.last_seen
            return seen is None or abs(seen - op.at_ms) > _PRESENCE_SLACK_MS
        return current.last_seen != op.at_ms

    def _refuse_unknown(self, op: _Op, out: _Outcome, error: RequestError, now: int) -> None:
        if isinstance(op, _Write | _Read):
            out.settle.append((op.future, error))
        elif isinstance(op, _Message):
            out.answers.append(
                (
                    topic(op.node_id, _REJECTED[op.channel]),
                    rejected(error, None, now),
                    Encoding.JSON,
                )
            )

    async def _apply_message(
        self,
        op: _Message,
        entry: _Entry,
        current: ShadowRecord,
        out: _Outcome,
        now: int,
        writable: bool,
        unavailable: RequestError,
    ) -> None:
        node_id = op.node_id
        encoding = entry.encoding
        token: str | None = None
        try:
            if op.refused is not None:
                with contextlib.suppress(RequestError):  # echo the token if there is one
                    obj, encoding = codec.decode(
                        op.payload, max_bytes=self._settings.max_payload_bytes
                    )
                    token = client_token_of(obj)
                raise op.refused
            if op.payload.strip() or op.channel is not Channel.DESIRE_GET:
                encoding = codec.sniff(op.payload)
                obj, encoding = codec.decode(op.payload, max_bytes=self._settings.max_payload_bytes)
            else:
                obj = {}  # an empty desire/get is allowed
            entry.encoding = encoding
            token = client_token_of(obj)
            if op.channel is Channel.REPORT:
                request = parse_report(obj)
                if not writable:
                    raise unavailable
                reported = current.reported
                if request.version is not None and request.version != reported.version:
                    raise Conflict(
                        f"the report is based on reported version {request.version}, but the "
                        f"current one is {reported.version}; get the current state and retry.",
                        current_version=reported.version,
                    )
                reported = reported.apply(request.reported, now, self._limits, path="reported")
                record = dataclasses.replace(
                    current,
                    reported=reported,
                    updated_at=now,
                    online=self.online(node_id),
                )
                out.changed[node_id] = record
                out.answers.append(
                    (
                        topic(node_id, Channel.REPORT_ACCEPTED),
                        accepted(request.client_token, reported.version, now),
                        encoding,
                    )
                )
                difference = delta(record.desired.state, reported.state)
                if difference:
                    out.answers.append(
                        (
                            topic(node_id, Channel.DELTA),
                            delta_message(record.desired.version, difference, now),
                            encoding,
                        )
                    )
            elif op.channel is Channel.DESIRE_GET:
                get = parse_get(obj)
                out.answers.append(
                    (
                        topic(node_id, Channel.DESIRE),
                        desire_message(current.desired, now, get.client_token),
                        encoding,
                    )
                )
            else:
                wanted = parse_resource_get(obj)
                try:
                    spec = await self._resources.resource(
                        node_id, wanted.kind, wanted.name, wanted.version
                    )
                except Exception:
                    # One node's failed lookup must not fail the batch of everyone else.
                    log.exception("resource/get of node %s failed", node_id)
                    raise Unavailable(
                        "The spec could not be read now; nothing was changed. Retry later."
                    ) from None
                if spec is None:
                    raise NotFound(
                        f"no {wanted.kind} {wanted.name!r} at version {wanted.version!r} for "
                        f"node {node_id}; ask for the versions named in the desired state."
                    )
                out.answers.append(
                    (
                        topic(node_id, Channel.RESOURCE),
                        resource_message(wanted, spec, now),
                        encoding,
                    )
                )
        except RequestError as error:
            if error.code >= 500 or isinstance(error, TooManyRequests | Forbidden):
                log.warning("refused %s from node %s: %s", op.channel, node_id, error.message)
            else:
                log.info("refused %s from node %s: %s", op.channel, node_id, error.message)
            out.answers.append(
                (
                    topic(node_id, _REJECTED[op.channel]),
                    rejected(error, token, now),
                    encoding,
                )
            )

    def _apply_write(
        self,
        op: _Write,
        entry: _Entry,
        current: ShadowRecord,
        out: _Outcome,
        now: int,
        writable: bool,
        unavailable: RequestError,
    ) -> None:
        change = op.change
        try:
            if not writable:
                raise unavailable
            desired = current.desired
            if change.version is not None and change.version != desired.version:
                raise Conflict(
                    f"node {op.node_id}'s desired state is at version {desired.version}, not "
                    f"{change.version}; read it again and reapply the change.",
                    current_version=desired.version,
                )
            if change.replace:
                desired = desired.replace(change.state, now, self._limits, path="desired")
            else:
                desired = desired.apply(change.state, now, self._limits, path="desired")
        except RequestError as error:
            out.settle.append((op.future, error))
            return
        out.changed[op.node_id] = dataclasses.replace(current, desired=desired, updated_at=now)
        message = desire_message(desired, now)
        if desired.encoded is not None:
            message["desired"] = _Encoded(desired.state, desired.encoded)
        push = (topic(op.node_id, Channel.DESIRE), message, entry.encoding)
        index = out.pushes.get(op.node_id)
        if index is None:  # one push per node per batch: the latest
            out.pushes[op.node_id] = len(out.answers)
            out.answers.append(push)
        else:
            out.answers[index] = push
        out.settle.append((op.future, desired))

"""``Router``: the node's routes run in the agent, from the spool to the cloud or the node broker.

One task per route with a local source. It reads the spool after the route's cursor in id order
(woken by the broker's ``$baetyl/broker/spool`` through :meth:`Router.wake`, polling every second
otherwise, every 50 ms while the agent's local client is not connected: no wake comes then),
skips the rows its source filter does not match, calls the route's function if any, renders the
target and publishes: to ``$baetyl/node/<id>/up/<rendered>`` on the cloud link, or to
the rendered topic on the node broker, at the route's QoS.

Ordering and at-least-once: publishes leave in id order, up to ``window`` in flight; the cursor
advances only over a contiguous prefix of acknowledged rows and is persisted (by the housekeeping
pass, never in a route's way: a cursor write waits for the broker's commit), so a crash or a
lost connection sends again what was not acknowledged (duplicates are possible, nothing is lost)
and a route's messages keep their order. While the route's publisher is gone (``set_cloud(None)``)
the task waits; given a new one it resumes from the cursor. Rows below every route's cursor are
deleted by the housekeeping pass (every ``housekeeping`` seconds), which also refreshes the
stats: per route ``forwarded`` (acknowledged since the agent started), ``queued`` (rows after its
cursor its filter matches), ``dropped`` (rows the broker's bounds deleted unread: its ``drops``
table), ``filtered`` (a function returned nothing), ``failed`` (a function failed, or the target
did not render) and ``lastError``.

A function is ``POST <function_url>/<app>/<function>`` with the payload as body (the standard
library's ``http.client`` in a thread, with a timeout): a 2xx body is the new payload, an empty
body or JSON ``null`` drops the message, anything else fails it (counted, skipped: the next
messages still flow). Calls of one batch run concurrently; their results are published in order.

The downlink: a message the cloud sent on ``down/<rest>`` is handed to :meth:`Router.downlink`,
which publishes it through every route whose cloud source matches ``rest`` to its local target,
and returns only once the node broker acknowledged each (waiting for the node broker if it is
away), so the caller acknowledges the cloud's message after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge.dataplane.filters import matches
from edge.dataplane.publisher import Publisher, PublishFailed
from edge.dataplane.routes import DEVICE_CLOUD, RouteSpec, Side
from edge.dataplane.spool import Row, Spool
from edge.errors import RouteSpecError
from shadow import uplink

__all__ = ["FunctionFailed", "Router"]

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH = 500  # rows read at once
FUNCTION_BATCH = 32  # rows read at once by a route with a function
FUNCTION_CALLS = 8  # function calls of one route at once
WINDOW = 2000  # publishes of one route in flight
POLL = 1.0  # seconds between reads of the spool when nothing wakes the router
# ... while the agent's local client is not connected: no $baetyl/broker/spool wakes come then
# (at start, the node broker listens a few seconds after the agent begins; measured, the first
# second of messages waited for the 1 s poll, the p99 of bench/dataplane.py's paced phase).
POLL_UNWOKEN = 0.05
CURSOR_EVERY = 0.2  # seconds between two writes of a busy route's cursor
FUNCTION_TIMEOUT = 35.0  # above the function runtime's own 30 s, so its 504 is what we see
COUNT_EVERY = 2.0  # seconds between two counts of the routes' queued rows
MAX_ERROR = 300  # characters of lastError


class FunctionFailed(Exception):
    """A function call did not give a payload; the message says why."""


_DROP = object()  # a function's answer that drops the message


@dataclass(slots=True)
class _Route:
    spec: RouteSpec
    cursor: int = 0  # the last row done with (acknowledged, skipped or failed)
    saved: int = 0  # the cursor as persisted
    forwarded: int = 0
    filtered: int = 0
    failed: int = 0
    queued: int = 0
    dropped: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = None
    saved_at: float = field(default=0.0)

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.last_error = reason[:MAX_ERROR]

    def stats(self) -> dict[str, object]:
        return {
            "forwarded": self.forwarded,
            "queued": self.queued,
            "dropped": self.dropped,
            "filtered": self.filtered,
            "failed": self.failed,
            "lastError": self.last_error,
        }


class Router:
    """See the module docstring. ``run`` until cancelled; the setters may be called any time,
    before ``run`` too, from the event loop's thread (a paho callback hands its wake over with
    ``loop.call_soon_threadsafe(router.wake)``)."""

    def __init__(
        self,
        *,
        node_id: str,
        node_name: str,
        spool_path: Path,
        function_url: str | None,
        on_change: Callable[[], None] | None = None,
        window: int = WINDOW,
        housekeeping: float = 0.5,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.spool_path = spool_path
        self.function_url = function_url.rstrip("/") if function_url else None
        self.on_change = on_change
        self.window = window
        self.housekeeping = housekeeping
        self._wanted: dict[str, RouteSpec] | None = None  # set_routes not applied yet
        self._routes: dict[str, _Route] = {}  # local sources: run by a task
        self._downlinks: dict[str, _Route] = {}  # cloud sources
        self._cloud: Publisher | None = None
        self._local: Publisher | None = None
        self._tick = asyncio.Event()
        self._spool: Spool | None = None
        self._disk: ThreadPoolExecutor | None = None  # the spool's writes and counts
        # The routes' reads: a connection and thread of their own, so a read never queues behind
        # a write waiting for the broker's commit (its fsync holds the write lock); measured,
        # 20-180 ms behind cursor writes and deletes, in the path of every message.
        self._reads: ThreadPoolExecutor | None = None
        self._reader: Spool | None = None
        self._calls: ThreadPoolExecutor | None = None  # function calls
        self._last_stats: dict[str, dict[str, object]] = {}
        self._routes_known = False  # set_routes applied once: before, nothing is deleted
        self._next_count = 0.0  # when the queued counts are refreshed next

    # -- the seam ----------------------------------------------------------------------------------

    def set_routes(self, routes: Sequence[RouteSpec]) -> None:
        """The node's routes now: new ones start at the end of the spool, removed ones' cursors
        are deleted, changed ones keep their cursor (applied by ``run``)."""
        self._wanted = {route.name: route for route in routes}
        for name, spec in self._wanted.items():  # downlink routes need no spool
            if spec.source.side is Side.CLOUD:
                if name in self._downlinks:
                    self._downlinks[name].spec = spec
                else:
                    self._downlinks[name] = _Route(spec)
        for name in [n for n in self._downlinks if self._wanted.get(n) is None
                     or self._wanted[n].source.side is not Side.CLOUD]:  # fmt: skip
            del self._downlinks[name]
        self.wake()

    def set_cloud(self, publisher: Publisher | None) -> None:
        """The cloud link's publisher, or None while the link is down (cloud targets wait)."""
        self._cloud = publisher
        self.wake()

    def set_local(self, publisher: Publisher | None) -> None:
        """The node broker's publisher, or None while it is unreachable (local targets wait)."""
        self._local = publisher
        self.wake()

    def wake(self) -> None:
        """Something changed (``$baetyl/broker/spool`` arrived, a publisher, the routes)."""
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def stats(self) -> dict[str, dict[str, object]]:
        """The reported ``routes`` section: per route, its counters and last error."""
        every = {**self._downlinks, **self._routes}
        return {name: every[name].stats() for name in sorted(every)}

    async def downlink(self, rest: str, payload: bytes) -> None:
        """Publish a message the cloud sent on ``down/<rest>`` through every route whose cloud
        source matches ``rest``; return once the node broker acknowledged each."""
        for route in list(self._downlinks.values()):
            spec = route.spec
            if not matches(spec.source.topic, rest):
                continue
            outcome = await self._transform(route, DEVICE_CLOUD, rest, payload)
            if outcome is None:
                continue
            topic, body = outcome
            while True:
                publisher = self._local
                if publisher is None:
                    await self._wait(POLL)
                    continue
                try:
                    await publisher.publish(topic, body, spec.qos)
                except PublishFailed:
                    await self._wait(POLL)
                    continue
                route.forwarded += 1
                break
        self._changed()

    async def run(self) -> None:
        """Run the routes until cancelled; the spool is opened here and closed on the way out."""
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="spool")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="spool-read")
        self._calls = ThreadPoolExecutor(FUNCTION_CALLS, thread_name_prefix="route-function")
        try:
            self._spool = await self._db(Spool, self.spool_path)
            self._reader = await self._read(Spool, self.spool_path)
            next_housekeeping = 0.0
            while True:
                tick = self._tick
                await self._apply_routes()
                if time.monotonic() >= next_housekeeping:
                    await self._housekeep()
                    next_housekeeping = time.monotonic() + self.housekeeping
                await _wait_set(tick, self.housekeeping)
        finally:
            await self._stop_tasks(list(self._routes.values()))
            with contextlib.suppress(Exception):
                await self._save_cursors(force=True)
            if self._spool is not None:
                with contextlib.suppress(Exception):
                    await self._db(self._spool.close)
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await self._read(self._reader.close)
                self._reader = None
            self._disk.shutdown(wait=True)
            self._reads.shutdown(wait=True)
            self._calls.shutdown(wait=False, cancel_futures=True)

    # -- routes ------------------------------------------------------------------------------------

    async def _apply_routes(self) -> None:
        wanted, self._wanted = self._wanted, None
        if wanted is None:
            return
        self._routes_known = True
        spool = self._require_spool()
        local = {n: s for n, s in wanted.items() if s.source.side is Side.LOCAL}
        gone = [route for name, route in self._routes.items() if name not in local]
        await self._stop_tasks(gone)
        for route in gone:
            del self._routes[route.spec.name]
            await self._db(spool.delete_cursor, route.spec.name)
        stale = set(await self._db(spool.cursors)) - set(local)
        for name in stale:  # a route removed while the agent was not running
            await self._db(spool.delete_cursor, name)
        for name, spec in local.items():
            existing = self._routes.get(name)
            if existing is not None and existing.spec == spec:
                continue
            if existing is None:
                cursor = await self._db(spool.create_cursor, name)
                route = self._routes[name] = _Route(spec, cursor=cursor, saved=cursor)
            else:
                route = existing  # changed: restarted with the new definition, from its cursor
                await self._stop_tasks([route])
                route.spec = spec
            route.task = asyncio.create_task(self._run_route(route), name=f"route-{name}")

    async def _stop_tasks(self, routes: Sequence[_Route]) -> None:
        tasks = [route.task for route in routes if route.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for route in routes:
            route.task = None

    def _publisher(self, route: _Route) -> Publisher | None:
        return self._cloud if route.spec.target.side is Side.CLOUD else self._local

    async def _run_route(self, route: _Route) -> None:
        while True:
            publisher = self._publisher(route)
            if publisher is None:
                await self._wait(POLL)
                continue
            try:
                await self._pump(route, publisher)
            except PublishFailed:
                log.info("route %s: the connection was lost; it resumes from its cursor when "
                         "reconnected", route.spec.name)  # fmt: skip
                await self._save_cursor(route, force=True)
                if self._publisher(route) is publisher:
                    await self._wait(POLL)  # the same publisher: give it time to reconnect
            except Exception:  # a bug must not stop the route for good: log, retry
                log.exception("route %s failed; it resumes from its cursor", route.spec.name)
                await self._wait(POLL)

    async def _pump(self, route: _Route, publisher: Publisher) -> None:
        """Send the route's rows through ``publisher`` until it is replaced or fails."""
        reader = self._reader
        assert reader is not None, "Router.run opens the spool"
        submit: Callable[[str, bytes, int], Awaitable[None]] = getattr(
            publisher, "submit", None
        ) or (lambda t, p, q: asyncio.ensure_future(publisher.publish(t, p, q)))
        window: deque[tuple[int, asyncio.Future[None] | None]] = deque()
        position = route.cursor
        batch = FUNCTION_BATCH if route.spec.function is not None else BATCH
        try:
            while self._publisher(route) is publisher:
                tick = self._tick
                rows = await self._read(reader.read, position, batch)
                if not rows:
                    if window:
                        await self._settle(route, window, wait=True)
                        continue
                    await _wait_set(tick, POLL if self._local is not None else POLL_UNWOKEN)
                    continue
                for row, outcome in zip(rows, await self._outcomes(route, rows), strict=True):
                    future: asyncio.Future[None] | None = None
                    if outcome is not None:
                        future = asyncio.ensure_future(submit(outcome[0], outcome[1],
                                                              route.spec.qos))  # fmt: skip
                        future.add_done_callback(_retrieve)
                    window.append((row.id, future))
                    while len(window) >= self.window and self._publisher(route) is publisher:
                        await self._settle(route, window, wait=True)
                position = rows[-1].id
                await self._settle(route, window, wait=False)
        finally:
            for _, future in window:  # what was not acknowledged is sent again from the cursor
                if future is not None and not future.done():
                    future.cancel()

    async def _settle(
        self, route: _Route, window: deque[tuple[int, asyncio.Future[None] | None]], *, wait: bool
    ) -> None:
        """Advance the cursor over the acknowledged prefix of ``window`` (after waiting for its
        head if ``wait``); PublishFailed if the head failed."""
        if wait and window:
            head = window[0][1]
            if head is not None and not head.done():
                # Or a wake (a publisher replaced): a lost connection whose publisher never
                # fails its futures must not hold the route.
                woken = asyncio.ensure_future(self._tick.wait())
                try:
                    waiters: list[asyncio.Future[Any]] = [head, woken]
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woken.cancel()
        while window:
            row_id, future = window[0]
            if future is not None:
                if not future.done():
                    break
                future.result()  # PublishFailed: the caller resumes from the cursor
                route.forwarded += 1
            window.popleft()
            route.cursor = row_id

    async def _outcomes(self, route: _Route, rows: list[Row]) -> list[tuple[str, bytes] | None]:
        """For each row: (topic, payload) to publish, or None (not matched, dropped, failed)."""
        spec = route.spec
        matched = [matches(spec.source.topic, row.topic) for row in rows]
        if spec.function is None:
            out: list[tuple[str, bytes] | None] = []
            for row, match in zip(rows, matched, strict=True):
                out.append(self._target(route, row.device, row.topic, row.payload)
                           if match else None)  # fmt: skip
            return out
        return list(
            await asyncio.gather(
                *(
                    self._transform(route, row.device, row.topic, row.payload) if match else _none()
                    for row, match in zip(rows, matched, strict=True)
                )
            )
        )

    async def _transform(
        self, route: _Route, device: str, topic: str, payload: bytes
    ) -> tuple[str, bytes] | None:
        """The function's answer (if the route has one) and the rendered target; None if the
        function dropped the message or it failed (counted)."""
        function = route.spec.function
        if function is not None:
            if self.function_url is None or self._calls is None:
                route.fail("No function endpoint on this node; the message was skipped.")
                return None
            url = f"{self.function_url}/{urllib.parse.quote(function.app)}/" + urllib.parse.quote(
                function.function
            )
            loop = asyncio.get_running_loop()
            try:
                answer = await loop.run_in_executor(self._calls, _call_function, url, payload)
            except FunctionFailed as exc:
                route.fail(f"function {function.app}/{function.function}: {exc}")
                return None
            if answer is _DROP:
                route.filtered += 1
                return None
            assert isinstance(answer, bytes)
            payload = answer
        return self._target(route, device, topic, payload)

    def _target(
        self, route: _Route, device: str, topic: str, payload: bytes
    ) -> tuple[str, bytes] | None:
        try:
            rendered = route.spec.render(device=device, node=self.node_name, topic=topic)
            if route.spec.target.side is Side.CLOUD:
                rendered = uplink(self.node_id, rendered)
        except (RouteSpecError, ValueError) as exc:
            route.fail(str(exc))
            return None
        return rendered, payload

    # -- the spool ---------------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn, *args)

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    def _require_spool(self) -> Spool:
        assert self._spool is not None, "Router.run opens the spool"
        return self._spool

    async def _save_cursor(self, route: _Route, *, force: bool = False) -> None:
        now = time.monotonic()
        if route.cursor == route.saved or (not force and now - route.saved_at < CURSOR_EVERY):
            return
        cursor = route.cursor
        await self._db(self._require_spool().set_cursors, {route.spec.name: cursor})
        route.saved, route.saved_at = cursor, now

    async def _save_cursors(self, *, force: bool) -> None:
        for route in list(self._routes.values()):
            await self._save_cursor(route, force=force)

    async def _housekeep(self) -> None:
        """Persist cursors, delete what every route is done with, refresh the stats."""
        spool = self._require_spool()
        await self._save_cursors(force=False)
        try:
            if self._routes:
                consumed = min(route.saved for route in self._routes.values())
                await self._db(spool.delete_through, consumed)
            elif (
                self._routes_known
            ):  # no local route: no row is anyone's (new ones start at the end)
                await self._db(spool.delete_through, await self._db(spool.end))
            drops = await self._db(spool.drops)
            for route in list(self._routes.values()):
                route.dropped = drops.get(route.spec.name, 0)
            if time.monotonic() >= self._next_count:  # a scan: not at every pass
                for route in list(self._routes.values()):
                    topic_filter = route.spec.source.topic
                    route.queued, _ = await self._db(spool.queued, route.cursor, topic_filter)
                self._next_count = time.monotonic() + COUNT_EVERY
        except Exception as exc:  # the broker holds the database long: try again next pass
            log.warning("the spool's housekeeping failed (%s); tried again shortly", exc)
        self._changed()

    def _changed(self) -> None:
        stats = self.stats()
        if stats != self._last_stats:
            self._last_stats = stats
            if self.on_change is not None:
                self.on_change()

    async def _wait(self, seconds: float) -> None:
        await _wait_set(self._tick, seconds)


async def _wait_set(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set or ``seconds`` passed. Not ``asyncio.wait_for``: before Python
    3.12 it swallows a cancellation that arrives once the event is set (a wake just before the
    agent stops the router), and ``run`` would go on instead of returning."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()


async def _none() -> None:
    return None


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a publish's failure as seen (the route handles it, or resumes from its cursor)."""
    if not future.cancelled():
        future.exception()


def _call_function(url: str, payload: bytes) -> object:
    """POST ``payload`` to ``url``: the answer's body, ``_DROP``, or FunctionFailed."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname is None:
        raise FunctionFailed(f"the function endpoint {url!r} is not an http:// URL")
    try:
        json.loads(payload)
        content_type = "application/json"
    except ValueError:
        content_type = "application/octet-stream"
    connection = http.client.HTTPConnection(
        parsed.hostname, parsed.port or 80, timeout=FUNCTION_TIMEOUT
    )
    try:
        connection.request(
            "POST", parsed.path, body=payload, headers={"Content-Type": content_type}
        )
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise FunctionFailed(f"the call failed ({exc}); is the function app running?") from exc
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise FunctionFailed(f"answered {response.status}: {_error_text(body)}")
    if not body.strip() or body.strip() == b"null":
        return _DROP
    return body


def _error_text(body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])
    return body[:200].decode(errors="replace")

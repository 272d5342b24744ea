"""The cloud's shadow side in a thread: embedded broker, a store and the shadow service.

Tests stay synchronous: paho clients connect over mTLS to ``cloud.port`` and the service's
Python interface is driven with ``cloud.call(lambda svc: svc.update_desired(...))``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

from broker import BrokerSettings, EmbeddedBroker, TLSFiles
from shadow import JSONObject, ResourceKind, StoreError
from shadow.server import (
    Database,
    EmbeddedBus,
    ShadowRecord,
    ShadowService,
    ShadowSettings,
    ShadowStore,
    ShadowWrite,
    SqlShadowStore,
)

T = TypeVar("T")


class Resources:
    """Specs keyed by (node id, kind, name, version): what the management API will provide."""

    def __init__(self) -> None:
        self.specs: dict[tuple[str, str, str, str], JSONObject] = {}
        self.broken: set[str] = set()  # names whose lookup fails, as a broken database would

    async def resource(
        self, node_id: str, kind: ResourceKind, name: str, version: str
    ) -> JSONObject | None:
        if name in self.broken:
            raise RuntimeError("the resource store failed (test)")
        return self.specs.get((node_id, kind.value, name, version))


class FlakyStore:
    """A real store that can be told to fail, as a database outage would."""

    def __init__(self, inner: ShadowStore) -> None:
        self.inner = inner
        self.failing = False

    async def load(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        if self.failing:
            raise StoreError("the database is down (test)")
        return await self.inner.load(node_ids)

    async def commit(self, writes: Sequence[ShadowWrite]) -> None:
        if self.failing:
            raise StoreError("the database is down (test)")
        await self.inner.commit(writes)

    async def node_ids(self) -> list[str]:
        return await self.inner.node_ids()

    async def ping(self) -> None:
        if self.failing:
            raise StoreError("the database is down (test)")
        await self.inner.ping()


class CloudThread:
    """Broker + store + shadow service serving from their own event loop thread."""

    def __init__(
        self,
        broker_settings: BrokerSettings,
        files: TLSFiles,
        db_url: str,
        settings: ShadowSettings | None = None,
    ) -> None:
        self.broker_settings = broker_settings
        self.files = files
        self.db_url = db_url
        self.settings = settings or ShadowSettings()
        self.resources = Resources()
        self.store: FlakyStore | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._service: ShadowService | None = None
        self._ports: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="cloud", daemon=True)

    def __enter__(self) -> CloudThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("The cloud did not start within 30 s.")
        if self._error is not None:
            self._thread.join(5)
            raise self._error
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "the cloud did not stop within 20 s"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with (
            EmbeddedBroker(self.broker_settings, self.files) as broker,
            Database.open(self.db_url) as db,
        ):
            self.store = FlakyStore(SqlShadowStore(db))
            async with ShadowService(
                EmbeddedBus(broker), self.store, self.settings, resources=self.resources
            ) as service:
                self._service = service
                self._ports = broker.ports
                self._ready.set()
                await self._stop.wait()
            self._service = None

    @property
    def port(self) -> int:
        return self._ports["mqtts"]

    def call(self, fn: Callable[[ShadowService], Awaitable[T]], timeout: float = 10) -> T:
        """Run ``fn(service)`` on the cloud's loop and return its result (or raise its error)."""
        assert self._loop is not None
        assert self._service is not None
        service = self._service

        async def run() -> T:
            return await fn(service)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def record(self, node_id: str) -> ShadowRecord:
        return self.call(lambda svc: svc.get(node_id))

    def stored(self, node_id: str) -> ShadowRecord | None:
        """What the database holds for the node (not the service's memory)."""

        async def load(_svc: ShadowService) -> Any:
            assert self.store is not None
            return (await self.store.inner.load([node_id])).get(node_id)

        found: ShadowRecord | None = self.call(load)
        return found

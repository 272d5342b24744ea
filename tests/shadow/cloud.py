"""The cloud's shadow side in a thread: embedded broker, a store and the shadow service.

Tests stay synchronous: paho clients connect over mTLS to ``cloud.port`` and the service's
Python interface is driven with ``cloud.call(lambda svc: svc.update_desired(...))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
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
from tests.support.loop_thread import LoopThread

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


class CloudThread(LoopThread):
    """Broker + store + shadow service serving from their own event loop thread."""

    name = "cloud"
    start_limit = 30.0
    stop_limit = 20.0

    def __init__(
        self,
        broker_settings: BrokerSettings,
        files: TLSFiles,
        db_url: str,
        settings: ShadowSettings | None = None,
    ) -> None:
        super().__init__()
        self.broker_settings = broker_settings
        self.files = files
        self.db_url = db_url
        self.settings = settings or ShadowSettings()
        self.resources = Resources()
        self.store: FlakyStore | None = None
        self._service: ShadowService | None = None
        self._ports: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
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
                yield
            self._service = None

    @property
    def port(self) -> int:
        return self._ports["mqtts"]

    def call(self, fn: Callable[[ShadowService], Awaitable[T]], timeout: float = 10) -> T:
        """Run ``fn(service)`` on the cloud's loop and return its result (or raise its error)."""
        assert self._service is not None
        service = self._service
        return self.run(lambda: fn(service), timeout)

    def record(self, node_id: str) -> ShadowRecord:
        return self.call(lambda svc: svc.get(node_id))

    def stored(self, node_id: str) -> ShadowRecord | None:
        """What the database holds for the node (not the service's memory)."""

        async def load(_svc: ShadowService) -> Any:
            assert self.store is not None
            return (await self.store.inner.load([node_id])).get(node_id)

        found: ShadowRecord | None = self.call(load)
        return found

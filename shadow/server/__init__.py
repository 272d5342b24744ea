"""The shadow service and what it stands on: the bus, the database, the store, the settings.

::

    async with Database(url) as db, ShadowService(EmbeddedBus(broker), SqlShadowStore(db)) as svc:
        await svc.update_desired("acme.gw-1", {"apps": [{"name": "web", "version": "3"}]})
"""

from shadow.server.bus import Bus, Denied, EmbeddedBus, MessageHandler, Presence
from shadow.server.database import Database, Transaction
from shadow.server.migrations import MIGRATIONS, Migration
from shadow.server.mqttbus import BusError, MqttBus
from shadow.server.service import DesiredWrite, NoResources, ResourceSource, ShadowService
from shadow.server.shadows import SqlShadowStore
from shadow.server.stats import Histogram, RequestKind, ShadowStats, StoreOperation
from shadow.server.store import ShadowRecord, ShadowStore, ShadowWrite
from shadow.settings import ShadowSettings

__all__ = [
    "MIGRATIONS",
    "Bus",
    "BusError",
    "Database",
    "Denied",
    "DesiredWrite",
    "EmbeddedBus",
    "Histogram",
    "MessageHandler",
    "Migration",
    "MqttBus",
    "NoResources",
    "Presence",
    "RequestKind",
    "ResourceSource",
    "ShadowRecord",
    "ShadowService",
    "ShadowSettings",
    "ShadowStats",
    "ShadowStore",
    "ShadowWrite",
    "SqlShadowStore",
    "StoreOperation",
    "Transaction",
]

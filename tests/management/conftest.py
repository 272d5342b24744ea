"""The whole cloud in the test's event loop: store, broker, shadow, API, activation endpoint.

``cloud`` runs on SQLite and on MariaDB (the ``database`` fixture of tests/shadow/conftest.py);
``api`` is an aiohttp client with a token for namespace ``default``; ``api_for(ns)`` makes one
for another namespace. Everything listens on loopback and port 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker import BrokerSettings
from certs import CertificateAuthority
from management.bootstrap import ensure_pki
from management.cloud import Cloud
from management.config import ApiSettings, DatabaseSettings, Settings
from management.store import ApiTokenRecord
from management.tokens import new_api_token
from shadow.server import ShadowSettings
from tests.shadow.conftest import Database, database, mariadb  # noqa: F401 # fixtures reused


@dataclass
class Api:
    """An HTTP client bound to one namespace's token."""

    session: aiohttp.ClientSession
    base: str
    namespace: str
    token: str

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """``(status, JSON body or None)`` of one request to ``/v1<path>``."""
        async with self.session.request(
            method,
            self.base + "/v1" + path,
            json=body,
            headers=self.headers(headers),
            params=params,
        ) as response:
            text = await response.text()
            return response.status, (await response.json() if text else None)


@dataclass
class RunningCloud:
    cloud: Cloud
    settings: Settings
    ca: CertificateAuthority
    database: Database

    @property
    def context(self) -> Any:
        assert self.cloud.context is not None
        return self.cloud.context

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.cloud.ports['api']}"

    @property
    def activation_url(self) -> str:
        return f"https://127.0.0.1:{self.cloud.ports['activation']}"

    @property
    def mqtt_port(self) -> int:
        return self.cloud.ports["mqtts"]

    async def token(self, namespace: str, *, expires_at: int | None = None) -> str:
        """A fresh API token for ``namespace`` (created with the namespace if needed)."""
        store = self.context.store
        await store.ensure_namespace(namespace)
        token_id, token, digest = new_api_token()
        now = int(time.time() * 1000)
        await store.add_token(ApiTokenRecord(token_id, namespace, "test", digest, now, expires_at))
        return token


def cloud_settings(data_dir: Path, url: str, **shadow: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        broker=BrokerSettings(host="127.0.0.1", port=0, connect_timeout=2.0, crl_poll_interval=0.1),
        database=DatabaseSettings(url=url),
        shadow=ShadowSettings(**shadow),
        api=ApiSettings(
            host="127.0.0.1",
            port=0,
            activation_host="127.0.0.1",
            activation_port=0,
            public_host="localhost",
        ),
    )


@pytest.fixture
async def cloud(database: Database, tmp_path: Path) -> AsyncIterator[RunningCloud]:  # noqa: F811
    """The whole cloud on a fresh database (SQLite and MariaDB), in this test's loop."""
    settings = cloud_settings(tmp_path / "data", database.url)
    ca, files = ensure_pki(settings)
    async with Cloud(settings, ca, files) as running:
        yield RunningCloud(running, settings, ca, database)


@pytest.fixture
async def api_for(cloud: RunningCloud) -> AsyncIterator[Callable[[str], Awaitable[Api]]]:
    """Make an API client for a namespace (its token created on the fly)."""
    async with aiohttp.ClientSession() as session:

        async def make(namespace: str) -> Api:
            return Api(session, cloud.api_url, namespace, await cloud.token(namespace))

        yield make


@pytest.fixture
async def api(api_for: Callable[[str], Awaitable[Api]]) -> Api:
    """An API client for namespace ``default``."""
    return await api_for("default")

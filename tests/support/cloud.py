"""The whole cloud in the test's event loop: store, broker, shadow, API, activation endpoint.

``RunningCloud`` is what the ``cloud`` fixture (tests/conftest.py) yields; ``Api`` is an aiohttp
client bound to one namespace's token (the ``api`` and ``api_for`` fixtures). Everything
listens on loopback and port 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from broker import BrokerSettings
from certs import CertificateAuthority
from management.cloud import Cloud
from management.config import ApiSettings, DatabaseSettings, Settings
from management.store import ApiTokenRecord
from management.tokens import new_api_token
from shadow.server import ShadowSettings
from tests.support.db import Database


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

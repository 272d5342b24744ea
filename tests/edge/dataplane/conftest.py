"""The data plane's fixtures: a real broker (the cloud's, embedded, in a thread) with its PKI,
paho clients that are closed after the test, and the spool as the node broker writes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from edge.dataplane.publisher import prepare_client
from tests.broker.clients import MqttClient
from tests.broker.helpers import BrokerThread, Creds, Pki, broker_settings, build_pki
from tests.edge.dataplane.brokerside import BrokerSpool


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki) -> Iterator[BrokerThread]:
    """The embedded broker with the cloud's ACL, and its loopback plaintext listener (the node
    broker's stand-in for local targets: a local client may publish any non-``$`` topic)."""
    with BrokerThread(broker_settings(), pki.files) as thread:
        yield thread


Connect = Callable[..., Awaitable[MqttClient]]


@pytest.fixture
async def connect(pki: Pki, broker: BrokerThread) -> AsyncIterator[Connect]:
    """``await connect(creds)`` (TLS) or ``await connect(client_id=..., plain=True)``."""
    clients: list[MqttClient] = []

    async def make(
        creds: Creds | None = None, *, client_id: str | None = None, plain: bool = False
    ) -> MqttClient:
        client = MqttClient(
            broker.ports["local"] if plain else broker.port,
            client_id if client_id is not None else (creds.client_id if creds else ""),
            ca=None if plain else pki.ca_file,
            creds=creds,
        )
        prepare_client(client.client)  # many in flight, as the agent's clients are made
        clients.append(client)
        await asyncio.to_thread(client.connect)
        return client

    yield make
    for client in clients:
        await asyncio.to_thread(client.close)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[BrokerSpool]:
    """The spool database, written as the node broker writes it."""
    side = BrokerSpool(tmp_path / "spool.db")
    yield side
    side.close()

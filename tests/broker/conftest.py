"""Broker test fixtures: one PKI per session, a fresh broker per test, clients that close."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker import TLSFiles
from tests.broker.clients import Connect, MqttClient
from tests.broker.helpers import BrokerThread, Creds, Pki, broker_settings, build_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server, node, operator, service, foreign and expired certificates on disk."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_broker(pki: Pki) -> Iterator[Callable[..., BrokerThread]]:
    """Start a broker with settings overridden by keyword (``files=`` replaces the TLS files)."""
    running: list[BrokerThread] = []

    def start(files: TLSFiles | None = None, **overrides: object) -> BrokerThread:
        thread = BrokerThread(broker_settings(**overrides), files or pki.files)
        running.append(thread.__enter__())
        return thread

    yield start
    for thread in reversed(running):
        thread.__exit__(None, None, None)


@pytest.fixture
def broker(start_broker: Callable[..., BrokerThread]) -> BrokerThread:
    """A broker with the default test settings and the shared PKI."""
    return start_broker()


@pytest.fixture
def connect(pki: Pki, request: pytest.FixtureRequest) -> Iterator[Connect]:
    """Open paho clients (to `broker` unless ``port=``, TLS unless ``plain=True``); all closed.

    ``connect(creds)`` connects and asserts CONNACK 0; with ``connected=False`` the client is only
    created (call ``try_connect`` yourself).
    """
    clients: list[MqttClient] = []

    def make(
        creds: Creds | None = None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        plain: bool = False,
        connected: bool = True,
        port: int | None = None,
        keepalive: int = 60,
    ) -> MqttClient:
        if port is None:
            broker: BrokerThread = request.getfixturevalue("broker")
            port = broker.ports["local"] if plain else broker.port
        cid = client_id if client_id is not None else (creds.client_id if creds else "")
        client = MqttClient(
            port,
            cid,
            ca=None if plain else pki.ca_file,
            creds=creds,
            clean_session=clean_session,
        )
        clients.append(client)
        if connected:
            client.connect(keepalive=keepalive)
        return client

    yield make
    for client in clients:
        client.close()


def tmp_files(pki: Pki, tmp_path: Path) -> TLSFiles:
    """A private copy of the server certificate, for tests that rotate it."""
    return pki.server_files(tmp_path / "server")

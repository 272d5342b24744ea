"""Limits: packet size, CONNECT and handshake timeouts, and the connection cap."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable

import pytest

from broker import EmbeddedBroker, RefusalReason
from tests.broker.clients import Connect, MqttClient
from tests.broker.helpers import (
    HOST,
    NODE_A,
    NODE_B,
    WAIT,
    BrokerThread,
    Pki,
    broker_settings,
    node_topic,
)
from tests.broker.rawmqtt import RawClient, connect_packet
from tests.support.polling import until_blocking

REPORT_A = node_topic(NODE_A, "report")


def test_oversized_publish_closes_the_connection(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """A PUBLISH larger than max_packet_size closes the connection and is delivered to nobody."""
    broker = start_broker(max_packet_size=2048)
    service = connect(pki.service, port=broker.port)
    assert service.subscribe(REPORT_A, 1) == [1]
    node = connect(pki.node_a, port=broker.port)
    node.publish(REPORT_A, b"x" * 1500, qos=1)
    assert len(service.receive().payload) == 1500

    node.client.publish(REPORT_A, b"x" * 4000, qos=1)
    assert node.disconnected.wait(2), "the oversized publish did not close the connection"
    assert service.drain(0.3) == []


def test_client_that_sends_no_connect_is_closed_after_the_timeout(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """A TLS connection that sends no CONNECT is closed after connect_timeout.

    Pins stock hole: no CONNECT timeout, a silent socket was held forever.
    """
    broker = start_broker(connect_timeout=0.5)
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        started = time.monotonic()
        assert raw.closed_within(3)
        assert time.monotonic() - started < 2


def test_client_that_never_starts_tls_is_closed_after_the_timeout(
    start_broker: Callable[..., BrokerThread],
) -> None:
    """A TCP connection that never starts the TLS handshake is closed after connect_timeout.

    Pins stock hole: asyncio's default 60 s handshake timeout.
    """
    broker = start_broker(connect_timeout=0.5)
    with socket.create_connection((HOST, broker.port), timeout=3) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 2


def test_connections_over_the_cap_are_refused(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """With max_connections=2 a third client never gets CONNACK 0, and a freed slot is reused.

    Pins stock hole: connections over the listener limit waited forever instead of being refused.
    """
    broker = start_broker(max_connections=2)
    first = connect(pki.node_a, port=broker.port)
    connect(pki.node_b, port=broker.port)
    third = connect(pki.service, port=broker.port, connected=False)
    result = third.try_connect(timeout=1)
    assert result is None or result[0] != 0

    first.close()

    def accepted() -> bool:
        return connect(pki.operator, port=broker.port, connected=False).try_connect() == (0, False)

    assert until_blocking(accepted, 3, every=0.05)


def test_handshakes_in_progress_count_against_the_cap(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """With max_connections=2, two silent sockets (no TLS yet) fill the broker: a third
    connection is refused before its handshake, as too-many-connections; closing them frees it.

    Handshakes used to be counted only once finished: any number of silent sockets each held a
    socket and a task until the connect timeout, and a full broker still did a whole handshake.
    """
    broker = start_broker(max_connections=2, connect_timeout=10.0)
    silent = [socket.create_connection((HOST, broker.port), timeout=WAIT) for _ in range(2)]

    def refused() -> bool:
        try:
            with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
                client.send(connect_packet(pki.node_a.client_id))
                client.read(timeout=1.0)
        except (OSError, TimeoutError):
            return True
        return False

    try:
        assert until_blocking(refused, 3, every=0.05)

        async def refusals_of(b: EmbeddedBroker) -> dict[str, int]:
            return b.stats().refusals

        refusals = broker.call(refusals_of)
        assert refusals[RefusalReason.TOO_MANY_CONNECTIONS] >= 1
        assert refusals[RefusalReason.ABORTED] == 0  # refused before TLS, not mid-handshake
    finally:
        for sock in silent:
            sock.close()
    assert until_blocking(lambda: not refused(), 3, every=0.05)


def test_oversized_publish_over_websocket_closes_the_connection(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """max_packet_size applies on the wss listener too (stock allowed 1 MiB WebSocket messages)."""
    broker = start_broker(max_packet_size=2048, ws_port=0)
    service = connect(pki.service, port=broker.port)
    assert service.subscribe(REPORT_A, 1) == [1]
    node = MqttClient(
        broker.ports["wss"], NODE_A, ca=pki.ca_file, creds=pki.node_a, transport="websockets"
    )
    try:
        node.connect()
        node.publish(REPORT_A, b"x" * 1500, qos=1)
        assert len(service.receive().payload) == 1500
        node.client.publish(REPORT_A, b"x" * 4000, qos=1)
        assert node.disconnected.wait(2), "the oversized publish did not close the connection"
        assert service.drain(0.3) == []
    finally:
        node.close()


def test_refused_publishes_are_logged_once_per_interval(
    pki: Pki, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """A node looping on a forbidden topic gets one log line, not one per message."""
    node = connect(pki.node_a)
    with caplog.at_level(logging.WARNING, logger="broker.core"):
        for _ in range(20):
            node.publish(node_topic(NODE_B, "report"), b"x", qos=1)
        node.publish(REPORT_A, b"fine", qos=1)  # a later allowed publish: the loop is alive
        assert until_blocking(
            lambda: any("denied publish" in r.getMessage() for r in caplog.records)
        )
        time.sleep(0.3)
    denied = [r.getMessage() for r in caplog.records if "denied publish" in r.getMessage()]
    assert len(denied) == 1, denied
    assert NODE_A in denied[0]


def test_connections_waiting_for_admission_are_closed_when_the_broker_stops(pki: Pki) -> None:
    """A connection cancelled while it waits for a handshake slot (the broker stopping) is
    closed, not left open with its socket."""
    thread = BrokerThread(broker_settings(handshakes_per_source=1, connect_timeout=10.0), pki.files)
    thread.__enter__()
    try:
        port = thread.port
        socks = [socket.create_connection((HOST, port), timeout=WAIT) for _ in range(2)]
        time.sleep(0.2)  # both accepted: one in its handshake, one waiting for the slot
    finally:
        thread.__exit__(None, None, None)
    for sock in socks:
        with sock:
            sock.settimeout(2.0)
            with contextlib.suppress(ConnectionResetError):  # a reset is a close too
                assert sock.recv(1) == b""  # not a TimeoutError: the socket was left open

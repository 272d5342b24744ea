"""Connections refused at CONNECT are counted by reason and logged at a bounded rate.

They used to reach amqtt as exceptions, which logged "Failed to initialize client session" as a
WARNING for each connection, and never reached ``refusals.counts`` (the metrics undercounted).
A WebSocket CONNECT was read whole, up to its Remaining Length's 256 MB, before any check.
"""

from __future__ import annotations

import logging
import ssl
import struct
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from broker import BrokerStats, EmbeddedBroker, RefusalReason
from broker.embedded import CONNECT_FAILED
from tests.broker.helpers import HOST, BrokerThread, Pki
from tests.broker.rawmqtt import CONNECT, RawClient, connect_packet, packet
from tests.support.polling import until_blocking


def _string(value: str) -> bytes:
    return struct.pack("!H", len(value)) + value.encode()


def stats(broker: BrokerThread) -> BrokerStats:
    async def get(b: EmbeddedBroker) -> BrokerStats:
        return b.stats()

    return broker.call(get)


MQTT5 = packet(CONNECT, 0, _string("MQTT") + bytes([5, 0x02, 0, 60, 0]) + _string("n"))
NOT_CONNECT = packet(3, 0, _string("t") + b"x")
TOO_SHORT = packet(CONNECT, 0, _string("MQTT") + bytes([4]))
# MQTT 3.1.1, but the reserved flag set [MQTT-3.1.2-3]: amqtt's parser refuses it.
RESERVED_FLAG = packet(CONNECT, 0, _string("MQTT") + bytes([4, 0x03, 0, 60]) + _string("n"))
# A CONNECT announcing 1 MiB (the test broker's limit is 256 KiB): refused on its header.
TOO_LARGE = b"\x10\x80\x80\x40"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(MQTT5, RefusalReason.PROTOCOL_VERSION, id="mqtt5"),
        pytest.param(NOT_CONNECT, RefusalReason.MALFORMED_CONNECT, id="not-connect"),
        pytest.param(TOO_SHORT, RefusalReason.MALFORMED_CONNECT, id="too-short"),
        pytest.param(RESERVED_FLAG, RefusalReason.MALFORMED_CONNECT, id="reserved-flag"),
        pytest.param(TOO_LARGE, RefusalReason.PACKET_TOO_LARGE, id="too-large"),
        pytest.param(b"", RefusalReason.CONNECT_TIMEOUT, id="silent"),
    ],
)
def test_a_refused_connect_is_counted_and_logged_once_per_interval(
    pki: Pki,
    start_broker: Callable[..., BrokerThread],
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    reason: RefusalReason,
) -> None:
    """Three refusals from one address: counted three times under their reason, one log line
    (broker.refusals), and none of amqtt's per-connection warnings."""
    caplog.set_level(logging.INFO)
    broker = start_broker(connect_timeout=0.5)
    for _ in range(3):
        with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
            if data:
                client.send(data)
            assert client.closed_within(2.0)
    assert until_blocking(lambda: stats(broker).refusals[reason] == 3), stats(broker).refusals
    others = {r: n for r, n in stats(broker).refusals.items() if r != reason}
    assert set(others.values()) == {0}
    logged = [
        r for r in caplog.records if r.name == "broker.refusals" and f": {reason}" in r.message
    ]
    assert len(logged) == 1, [r.message for r in logged]
    warned = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in warned if CONNECT_FAILED in m], warned


def test_a_valid_connect_is_not_refused(pki: Pki, broker: BrokerThread) -> None:
    """The counting leaves a 3.1.1 CONNECT alone."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(connect_packet(pki.node_a.client_id))
        assert client.read().body == b"\x00\x00"
    assert sum(stats(broker).refusals.values()) == 0


def test_a_websocket_connect_over_the_packet_size_is_refused_on_its_header(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """A WebSocket CONNECT announcing more than broker.max_packet_size is closed on its header,
    not read (buffered) up to its Remaining Length until the CONNECT timeout."""
    broker = start_broker(ws_port=0, connect_timeout=3.0)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(pki.node_a.cert, pki.node_a.key)
    uri = f"wss://{HOST}:{broker.ports['wss']}/"
    with ws_connect(uri, ssl=context, subprotocols=["mqtt"], server_hostname="localhost") as ws:  # type: ignore[list-item]
        ws.send(TOO_LARGE)
        with pytest.raises(ConnectionClosed):  # before the 1 MiB body: no waiting for it
            ws.recv(timeout=1.5)  # the CONNECT timeout is 3 s
    assert until_blocking(lambda: stats(broker).refusals[RefusalReason.PACKET_TOO_LARGE] == 1)

"""Connection events, session take-over and keepalive."""

from __future__ import annotations

import time

import pytest

from broker import DisconnectReason, EmbeddedBroker, EventKind
from tests.broker.clients import Connect
from tests.broker.helpers import NODE_A, BrokerThread, Pki, node_topic
from tests.broker.rawmqtt import CONNACK, RawClient, connect_packet

DESIRE_A, REPORT_A = node_topic(NODE_A, "desire"), node_topic(NODE_A, "report")


def test_connect_and_clean_disconnect_events(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """DISCONNECT emits connected, then disconnected (client-disconnect), with the node id."""
    connect(pki.node_a).close()
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    connected = broker.events[0]
    assert (connected.kind, connected.client_id, connected.principal, connected.reason) == (
        EventKind.CONNECTED,
        NODE_A,
        NODE_A,
        None,
    )
    assert (event.client_id, event.principal, event.reason) == (
        NODE_A,
        NODE_A,
        DisconnectReason.CLIENT_DISCONNECT,
    )
    assert connected.at <= event.at


def test_connection_lost_event(pki: Pki, broker: BrokerThread, connect: Connect) -> None:
    """A socket closed without DISCONNECT is reported as connection-lost."""
    connect(pki.node_a).kill()
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert (event.client_id, event.reason) == (NODE_A, DisconnectReason.CONNECTION_LOST)


@pytest.mark.parametrize("clean_session", [True, False])
def test_same_client_id_takes_over_the_session(
    pki: Pki, broker: BrokerThread, connect: Connect, clean_session: bool
) -> None:
    """A second connection with the same client id closes the first (session-taken-over), and the
    new connection receives what is published afterwards [MQTT-3.1.4-2]."""
    first = connect(pki.node_a, clean_session=clean_session)
    assert first.subscribe(DESIRE_A, 1) == [1]
    second = connect(pki.node_a, clean_session=clean_session)
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert (event.client_id, event.reason) == (NODE_A, DisconnectReason.SESSION_TAKEN_OVER)
    assert first.disconnected.wait(2), "the first connection was left open"

    if clean_session:
        assert second.subscribe(DESIRE_A, 1) == [1]
    connect(pki.service).publish(DESIRE_A, b"to the new one", qos=1)
    assert second.receive().payload == b"to the new one"
    assert broker.call(_connected) == [NODE_A, "service:shadow"]


async def _connected(broker: EmbeddedBroker) -> list[str]:
    return sorted(broker.connected())


def test_silent_client_is_dropped_after_one_and_a_half_keepalives_and_its_will_published(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """A client silent for 1.5 x keepalive is dropped (keepalive-timeout) and its will published.

    Pins stock hole: ``handle_read_timeout`` does nothing, so keepalive was never enforced.
    """
    service = connect(pki.service)
    assert service.subscribe(REPORT_A, 1) == [1]
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, keepalive=1, will=(REPORT_A, b"gone", 1)))
        assert raw.expect(CONNACK).body == b"\x00\x00"
        started = time.monotonic()
        will = service.receive(timeout=4)
        elapsed = time.monotonic() - started
        assert raw.closed_within(1)
    assert (will.topic, will.payload, will.retain) == (REPORT_A, b"gone", False)
    assert 1.2 <= elapsed <= 3.0, elapsed
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert (event.client_id, event.reason) == (NODE_A, DisconnectReason.KEEPALIVE_TIMEOUT)


def test_client_that_pings_stays_connected(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """paho's own PINGREQs keep a keepalive=1 connection open well past 1.5 s."""
    node = connect(pki.node_a, keepalive=1)
    time.sleep(1.8)
    assert not node.disconnected.is_set()
    assert node.subscribe(DESIRE_A, 1) == [1]


def test_will_topic_must_be_allowed(pki: Pki, broker: BrokerThread) -> None:
    """A CONNECT whose will targets a topic the node may not publish to is refused (CONNACK 5)."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, will=(node_topic("default.node-b", "report"), b"x", 0)))
        assert raw.expect(CONNACK).body == b"\x00\x05"
        assert raw.closed_within(1)


def test_kicked_client_is_disconnected_with_its_reason(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """``broker.disconnect`` closes a client's connection now and reports the reason (kicked)."""
    node = connect(pki.node_a)
    assert broker.call(lambda b: b.disconnect(NODE_A)) is True
    assert node.disconnected.wait(2)
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert event.reason == DisconnectReason.KICKED
    assert broker.call(lambda b: b.disconnect("nobody")) is False

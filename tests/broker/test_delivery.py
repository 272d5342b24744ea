"""MQTT 3.1.1 delivery: QoS, retained messages, persistent sessions and redelivery."""

from __future__ import annotations

import struct

import pytest

from broker import DisconnectReason, EmbeddedBroker
from broker.handler import MAX_INFLIGHT
from tests.broker.clients import Connect
from tests.broker.helpers import NODE_A, NODE_B, BrokerThread, Pki, node_topic
from tests.broker.rawmqtt import (
    CONNACK,
    PUBACK,
    PUBLISH,
    SUBACK,
    RawClient,
    connect_packet,
    packet,
    subscribe_packet,
)

DESIRE_A = node_topic(NODE_A, "desire")


@pytest.mark.parametrize(
    ("publish_qos", "subscription_qos", "delivered_qos"),
    [(0, 1, 0), (1, 0, 0), (1, 1, 1), (0, 0, 0)],
)
def test_delivery_qos_is_the_lower_of_publish_and_subscription(
    pki: Pki, connect: Connect, publish_qos: int, subscription_qos: int, delivered_qos: int
) -> None:
    """A message arrives at min(publish QoS, subscription QoS).

    Pins stock hole: delivery used the subscription's QoS, upgrading QoS 0 publishes
    (broker.py ≈1023).
    """
    node = connect(pki.node_a)
    assert node.subscribe(DESIRE_A, subscription_qos) == [subscription_qos]
    connect(pki.service).publish(DESIRE_A, b"m", qos=publish_qos)
    assert node.receive().qos == delivered_qos


@pytest.mark.parametrize(
    ("retained_qos", "subscription_qos", "delivered_qos"),
    [(1, 0, 0), (0, 1, 0), (1, 1, 1)],
)
def test_retained_message_qos_is_the_lower_of_both(
    pki: Pki, connect: Connect, retained_qos: int, subscription_qos: int, delivered_qos: int
) -> None:
    """A retained message is sent on SUBSCRIBE at min(its QoS, the subscription's QoS).

    Pins stock hole: ``min(qos, retained.qos or qos)`` upgraded a retained QoS 0 message to the
    subscription's QoS (broker.py ≈1150).
    """
    connect(pki.service).publish(DESIRE_A, b"kept", qos=retained_qos, retain=True)
    node = connect(pki.node_a)
    assert node.subscribe(DESIRE_A, subscription_qos) == [subscription_qos]
    message = node.receive()
    assert (message.payload, message.retain, message.qos) == (b"kept", True, delivered_qos)


def test_session_present_flag_across_connections(pki: Pki, connect: Connect) -> None:
    """CONNACK says session present 0 for a new session, 1 on resume, and 0 with clean_session."""
    first = connect(pki.node_a, clean_session=False, connected=False)
    assert first.try_connect() == (0, False)
    first.close()
    resumed = connect(pki.node_a, clean_session=False, connected=False)
    assert resumed.try_connect() == (0, True)
    resumed.close()
    clean = connect(pki.node_a, clean_session=True, connected=False)
    assert clean.try_connect() == (0, False)
    clean.close()
    after_clean = connect(pki.node_a, clean_session=False, connected=False)
    assert after_clean.try_connect() == (0, False)


def test_offline_qos1_messages_are_delivered_on_return(pki: Pki, connect: Connect) -> None:
    """QoS 1 messages for an offline persistent session arrive on resume, without RETAIN; QoS 0
    messages are not queued.

    Pins stock hole: queued messages were sent with RETAIN set (broker.py ≈1128) and upgraded QoS 0
    messages were queued too.
    """
    node = connect(pki.node_a, clean_session=False)
    assert node.subscribe(DESIRE_A, 1) == [1]
    node.close()
    service = connect(pki.service)
    service.publish(DESIRE_A, b"qos0", qos=0)
    service.publish(DESIRE_A, b"one", qos=1)
    service.publish(DESIRE_A, b"two", qos=1)

    back = connect(pki.node_a, clean_session=False, connected=False)
    assert back.try_connect() == (0, True)
    received = [back.receive(), back.receive()]
    assert sorted(m.payload for m in received) == [b"one", b"two"]
    assert all(m.qos == 1 and not m.retain and m.topic == DESIRE_A for m in received)
    assert back.drain(0.3) == []


def test_unacknowledged_qos1_message_is_redelivered_with_dup(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """A QoS 1 message never PUBACKed is resent with DUP and the same packet id on resume.

    Pins stock hole: the in-flight message was dropped when the connection closed
    (handler.py ≈325-328), so nothing was redelivered.
    """
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x00\x00"
        raw.send(subscribe_packet(1, DESIRE_A, 1))
        assert raw.expect(SUBACK).body == b"\x00\x01\x01"
        connect(pki.service).publish(DESIRE_A, b"ack me", qos=1)
        first = raw.expect(PUBLISH)
        topic, packet_id, payload = first.publish()
        assert (topic, payload, first.qos, first.dup) == (DESIRE_A, b"ack me", 1, False)
    # closed without PUBACK

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x01\x00"  # session present
        again = raw.expect(PUBLISH)
        assert again.publish() == (DESIRE_A, packet_id, b"ack me")
        assert again.dup
        assert packet_id is not None
        raw.send(packet(PUBACK, 0, struct.pack("!H", packet_id)))


def test_retained_message_is_set_replaced_and_cleared(pki: Pki, connect: Connect) -> None:
    """A retained message is replaced by the next one and cleared by an empty payload."""
    service = connect(pki.service)
    service.publish(DESIRE_A, b"v1", qos=1, retain=True)
    service.publish(DESIRE_A, b"v2", qos=1, retain=True)

    first = connect(pki.node_a)
    assert first.subscribe(DESIRE_A, 1) == [1]
    message = first.receive()
    assert (message.payload, message.retain) == (b"v2", True)
    assert first.drain(0.2) == []

    service.publish(DESIRE_A, b"", qos=1, retain=True)
    cleared = first.receive()  # live subscribers see the clearing message itself
    assert (cleared.payload, cleared.retain) == (b"", False)
    first.close()

    later = connect(pki.node_a)
    assert later.subscribe(DESIRE_A, 1) == [1]
    assert later.drain(0.3) == []


def test_overlapping_subscriptions_get_one_copy_each(pki: Pki, connect: Connect) -> None:
    """A message matching two of a client's filters is delivered once per filter (3.1.1 allows it
    [MQTT-3.3.5-1]); each copy at its own subscription's QoS."""
    service = connect(pki.service)
    assert service.subscribe("overlap/b", 1) == [1]
    assert service.subscribe("overlap/+", 0) == [0]
    service.publish("overlap/b", b"once", qos=1)
    copies = [service.receive(), service.receive()]
    assert sorted(m.qos for m in copies) == [0, 1]
    assert {m.payload for m in copies} == {b"once"}
    assert service.drain(0.3) == []


def test_inflight_window_queues_the_rest_in_order(pki: Pki, broker: BrokerThread) -> None:
    """A client that has not acknowledged 1,000 QoS 1 messages gets no more until it acks;
    the rest wait in order and one is sent per PUBACK (no disconnect, nothing lost)."""
    total = MAX_INFLIGHT + 50

    async def publish_all(embedded: EmbeddedBroker) -> None:
        for index in range(total):
            await embedded.publish(DESIRE_A, str(index).encode(), qos=1)

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        raw.send(subscribe_packet(1, DESIRE_A, 1))
        raw.expect(SUBACK)
        broker.call(publish_all)
        window = [raw.expect(PUBLISH).publish() for _ in range(MAX_INFLIGHT)]
        assert [payload for _, _, payload in window] == [
            str(i).encode() for i in range(MAX_INFLIGHT)
        ]
        with pytest.raises(TimeoutError):
            raw.read(timeout=0.3)  # the window is full
        for _topic, packet_id, _payload in window[:10]:
            assert packet_id is not None
            raw.send(packet(PUBACK, 0, struct.pack("!H", packet_id)))
        more = [raw.expect(PUBLISH).publish()[2] for _ in range(10)]
        assert more == [str(i).encode() for i in range(MAX_INFLIGHT, MAX_INFLIGHT + 10)]
    assert not [e for e in broker.events if e.reason == DisconnectReason.SLOW_CONSUMER]


def test_a_service_gets_a_wider_window_than_a_node(pki: Pki, broker: BrokerThread) -> None:
    """A service (the cloud side, subscribed to every node's reports) is not held to a node's
    1,000 unacknowledged messages: with a node's window its throughput fell to one window per
    event-loop iteration at fleet scale, and its queue dropped reports."""
    total = MAX_INFLIGHT + 500

    async def publish_all(embedded: EmbeddedBroker) -> None:
        for index in range(total):
            await embedded.publish("svc/window", str(index).encode(), qos=1)

    with RawClient(broker.port, pki.ca_file, pki.service) as raw:
        raw.send(connect_packet("service:shadow/window"))
        raw.expect(CONNACK)
        raw.send(subscribe_packet(1, "svc/window", 1))
        raw.expect(SUBACK)
        broker.call(publish_all)
        got = [raw.expect(PUBLISH).publish()[2] for _ in range(total)]  # none acknowledged
        assert got == [str(i).encode() for i in range(total)]


def test_large_packets_from_two_nodes_at_once_arrive_intact(pki: Pki, connect: Connect) -> None:
    """Connections share the broker's TLS read buffer between reads: two nodes sending 200 KiB
    reports at the same time (each read many times, the reads interleaved) deliver both intact."""
    service = connect(pki.service)
    assert service.subscribe("$baetyl/node/+/report", 1) == [1]
    node_a, node_b = connect(pki.node_a), connect(pki.node_b)
    bodies = {
        node_topic(NODE_A, "report"): bytes(range(256)) * 800,
        node_topic(NODE_B, "report"): bytes(reversed(range(256))) * 800,
    }
    for _ in range(3):
        for client, (topic, body) in zip((node_a, node_b), bodies.items(), strict=True):
            client.publish(topic, body, qos=1)
    got = [service.receive() for _ in range(6)]
    assert sorted(m.topic for m in got) == sorted(list(bodies) * 3)
    assert all(m.payload == bodies[m.topic] for m in got)


def test_connections_read_into_one_buffer_per_broker(pki: Pki, broker: BrokerThread) -> None:
    """After its handshake, no connection keeps a TLS read buffer of its own (4 KiB each at
    10,000 idle nodes); a service reads into the larger shared one."""
    with (
        RawClient(broker.port, pki.ca_file, pki.node_a) as node,
        RawClient(broker.port, pki.ca_file, pki.service) as service,
    ):
        node.send(connect_packet(NODE_A))
        node.expect(CONNACK)
        service.send(connect_packet("service:shadow/buffers"))
        service.expect(CONNACK)

        async def buffers(embedded: EmbeddedBroker) -> dict[str, tuple[bool, bool]]:
            inner = embedded._broker
            assert inner is not None
            shared = inner._read_buffers
            out: dict[str, tuple[bool, bool]] = {}
            for client_id, (_session, handler) in inner._sessions.items():
                protocol = handler.writer._writer.transport._ssl_protocol
                out[client_id] = (
                    protocol._ssl_buffer is shared.node,
                    protocol._ssl_buffer is shared.service,
                )
            return out

        found = broker.call(buffers)
    assert found[NODE_A] == (True, False)
    assert found["service:shadow/buffers"] == (False, True)

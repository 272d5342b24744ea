"""QoS 2, both directions: end to end with paho, and the flows packet by packet with raw MQTT."""

from __future__ import annotations

import struct
from collections.abc import Callable

from tests.broker.clients import Connect, MqttClient
from tests.broker.helpers import NODE_A, BrokerThread, Pki, node_topic
from tests.broker.rawmqtt import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    RawClient,
    ack_packet,
    connect_packet,
    packet,
    publish_packet,
    subscribe_packet,
)

DESIRE_A = node_topic(NODE_A, "desire")
REPORT_A = node_topic(NODE_A, "report")


def _pid(packet_id: int) -> bytes:
    return struct.pack("!H", packet_id)


def test_qos2_end_to_end_with_paho(pki: Pki, connect: Connect) -> None:
    """paho publishes and receives at QoS 2 both ways, each message exactly once.

    Pins our own QoS 2 flow: paho's publish returns only after the broker's PUBREC and PUBCOMP,
    and a subscriber at QoS 2 gets the message at QoS 2.
    """
    node = connect(pki.node_a)
    service = connect(pki.service)
    assert node.subscribe(DESIRE_A, 2) == [2]
    assert service.subscribe(REPORT_A, 2) == [2]

    service.publish(DESIRE_A, b"desired", qos=2)
    received = node.receive()
    assert (received.topic, received.payload, received.qos) == (DESIRE_A, b"desired", 2)

    node.publish(REPORT_A, b"reported", qos=2)
    received = service.receive()
    assert (received.topic, received.payload, received.qos) == (REPORT_A, b"reported", 2)
    assert node.drain() == []
    assert service.drain() == []


def test_unacknowledged_qos2_message_is_resent_then_released_after_reconnects(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """A QoS 2 message never PUBRECed is resent with DUP on resume; once PUBRECed, PUBREL is.

    Pins amqtt's QoS 2 flow, which forgot the message on disconnect [MQTT-4.4.0-1]: nothing was
    resent after a clean-session-0 reconnect.
    """
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x00\x00"
        raw.send(subscribe_packet(1, DESIRE_A, 2))
        assert raw.expect(SUBACK).body == b"\x00\x01\x02"
        connect(pki.service).publish(DESIRE_A, b"exactly once", qos=2)
        first = raw.expect(PUBLISH)
        topic, packet_id, payload = first.publish()
        assert (topic, payload, first.qos, first.dup) == (DESIRE_A, b"exactly once", 2, False)
        assert packet_id is not None
    # closed without PUBREC

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x01\x00"
        again = raw.expect(PUBLISH)
        assert again.publish() == (DESIRE_A, packet_id, b"exactly once")
        assert (again.qos, again.dup) == (2, True)
        raw.send(ack_packet(PUBREC, packet_id))
        release = raw.expect(PUBREL)
        assert (release.flags, release.body) == (0x02, _pid(packet_id))
    # closed without PUBCOMP

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x01\x00"
        release = raw.expect(PUBREL)  # not the PUBLISH again: the client has it
        assert release.body == _pid(packet_id)
        raw.send(ack_packet(PUBCOMP, packet_id))
        raw.send(packet(PINGREQ, 0, b""))
        assert raw.expect(PINGRESP)

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x01\x00"
        raw.send(packet(PINGREQ, 0, b""))
        assert raw.expect(PINGRESP).kind == PINGRESP  # complete: nothing is resent


def test_incoming_qos2_is_routed_once_until_pubrel_even_across_a_reconnect(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """A QoS 2 PUBLISH resent before its PUBREL is answered with PUBREC but not routed again.

    The packet id is held in the persistent session until PUBREL, so a resend after a
    reconnect is not a second message either; after PUBCOMP the id starts a new message.
    """
    service = connect(pki.service)
    assert service.subscribe(REPORT_A, 2) == [2]
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x00\x00"
        raw.send(publish_packet(REPORT_A, b"once", 2, 7))
        assert raw.expect(PUBREC).body == _pid(7)
        assert service.receive().payload == b"once"
        raw.send(publish_packet(REPORT_A, b"once", 2, 7, dup=True))
        assert raw.expect(PUBREC).body == _pid(7)
    # closed before PUBREL

    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A, clean_session=False))
        assert raw.expect(CONNACK).body == b"\x01\x00"
        raw.send(publish_packet(REPORT_A, b"once", 2, 7, dup=True))
        assert raw.expect(PUBREC).body == _pid(7)
        raw.send(ack_packet(PUBREL, 7))
        assert raw.expect(PUBCOMP).body == _pid(7)
        assert service.drain() == []  # the resends were not routed

        raw.send(publish_packet(REPORT_A, b"next", 2, 7))  # the id is free again
        assert raw.expect(PUBREC).body == _pid(7)
        raw.send(ack_packet(PUBREL, 7))
        assert raw.expect(PUBCOMP).body == _pid(7)
        assert service.receive().payload == b"next"


def test_pubrel_without_a_held_id_is_still_completed(pki: Pki, broker: BrokerThread) -> None:
    """A PUBREL for an id the broker does not hold (its PUBCOMP was lost) gets PUBCOMP."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        raw.send(ack_packet(PUBREL, 42))
        assert raw.expect(PUBCOMP).body == _pid(42)


def test_qos2_messages_held_past_the_window_close_the_connection(
    pki: Pki, broker: BrokerThread
) -> None:
    """A client holding more QoS 2 ids without PUBREL than its window (1,000) is disconnected.

    Each held id costs the broker memory until PUBREL; a client that never sends one is cut off.
    """
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        raw.send(b"".join(publish_packet(REPORT_A, b"", 2, i) for i in range(1, 1001)))
        for _ in range(1000):
            raw.expect(PUBREC)
        raw.send(publish_packet(REPORT_A, b"", 2, 1001))
        assert raw.closed_within(2)


def test_pubrel_with_wrong_flags_closes_the_connection(pki: Pki, broker: BrokerThread) -> None:
    """PUBREL's fixed-header flags must be 0010 [MQTT-3.6.1-1]; other flags close the connection,
    and so does an acknowledgement that is not two bytes long."""
    for bad in (packet(PUBREL, 0, _pid(1)), packet(PUBCOMP, 0, _pid(1) + b"\x00")):
        with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
            raw.send(connect_packet(NODE_A))
            raw.expect(CONNACK)
            raw.send(bad)
            assert raw.closed_within(2), bad


def test_qos2_over_websocket(pki: Pki, start_broker: Callable[..., BrokerThread]) -> None:
    """Over wss (amqtt's reader loop, our handlers) QoS 2 works both ways, and a filter over
    the budget gets 0x80 there too."""
    broker = start_broker(ws_port=0)
    port = broker.ports["wss"]
    node = MqttClient(port, NODE_A, ca=pki.ca_file, creds=pki.node_a, transport="websockets")
    service = MqttClient(
        port, pki.service.client_id, ca=pki.ca_file, creds=pki.service, transport="websockets"
    )
    try:
        node.connect()
        service.connect()
        assert node.subscribe(DESIRE_A, 2) == [2]
        assert node.subscribe(DESIRE_A + "/x" * 40, 1) == [0x80]
        assert service.subscribe(REPORT_A, 2) == [2]
        service.publish(DESIRE_A, b"desired", qos=2)
        assert (node.receive().payload, node.drain()) == (b"desired", [])
        node.publish(REPORT_A, b"reported", qos=2)
        received = service.receive()
        assert (received.payload, received.qos) == (b"reported", 2)
        assert service.drain() == []
    finally:
        node.close()
        service.close()

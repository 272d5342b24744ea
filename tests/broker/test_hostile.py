"""Hostile clients: malformed SUBSCRIBE/UNSUBSCRIBE packets, and the per-client budgets.

Each case is sent as raw packets: paho refuses to build most of them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from broker import BrokerSettings
from tests.broker.clients import Connect
from tests.broker.helpers import NODE_A, BrokerThread, Pki, node_topic
from tests.broker.rawmqtt import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    RawClient,
    connect_packet,
    packet,
    publish_packet,
    string,
    subscribe_packet,
)

PREFIX = f"$baetyl/node/{NODE_A}/"
DESIRE_A = node_topic(NODE_A, "desire")


def _subscribe_body(*filters: bytes | str, qos: int = 1, packet_id: int = 1) -> bytes:
    return struct.pack("!H", packet_id) + b"".join(string(f) + bytes([qos]) for f in filters)


def _still_open(raw: RawClient) -> bool:
    raw.send(packet(PINGREQ, 0, b""))
    return raw.expect(PINGRESP).kind == PINGRESP


MALFORMED = {
    "no filter [MQTT-3.8.3-3]": packet(SUBSCRIBE, 2, struct.pack("!H", 1)),
    "flags 0000 [MQTT-3.8.1-1]": packet(SUBSCRIBE, 0, _subscribe_body(DESIRE_A)),
    "flags 0011 [MQTT-3.8.1-1]": packet(SUBSCRIBE, 3, _subscribe_body(DESIRE_A)),
    "QoS 3 [MQTT-3.8.3-4]": packet(SUBSCRIBE, 2, _subscribe_body(DESIRE_A, qos=3)),
    "reserved QoS bits [MQTT-3.8.3-4]": packet(SUBSCRIBE, 2, _subscribe_body(DESIRE_A, qos=0x81)),
    "not UTF-8 [MQTT-1.5.3-1]": packet(
        SUBSCRIBE, 2, _subscribe_body(PREFIX.encode() + b"\xff\xfe")
    ),
    "a UTF-16 surrogate [MQTT-1.5.3-1]": packet(
        SUBSCRIBE, 2, _subscribe_body(PREFIX.encode() + b"\xed\xa0\x80")
    ),
    "U+0000 [MQTT-1.5.3-2]": packet(SUBSCRIBE, 2, _subscribe_body(PREFIX + "de\x00sire")),
    "packet id 0 [MQTT-2.3.1-1]": packet(SUBSCRIBE, 2, _subscribe_body(DESIRE_A, packet_id=0)),
    "filter cut short": packet(SUBSCRIBE, 2, struct.pack("!HH", 1, 50) + b"$baetyl"),
    "no QoS byte": packet(SUBSCRIBE, 2, struct.pack("!H", 1) + string(DESIRE_A)),
    "UNSUBSCRIBE without a filter [MQTT-3.10.3-2]": packet(UNSUBSCRIBE, 2, struct.pack("!H", 1)),
    "UNSUBSCRIBE flags 0000 [MQTT-3.10.1-1]": packet(
        UNSUBSCRIBE, 0, struct.pack("!H", 1) + string(DESIRE_A)
    ),
    "UNSUBSCRIBE not UTF-8": packet(UNSUBSCRIBE, 2, struct.pack("!H", 1) + string(b"\xc3")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_subscribe_closes_the_connection(
    pki: Pki, broker: BrokerThread, case: str
) -> None:
    """A SUBSCRIBE or UNSUBSCRIBE MQTT 3.1.1 calls malformed closes the connection, no SUBACK.

    Pins amqtt's decoder, which answered each of these with a SUBACK (and subscribed a filter
    that is not UTF-8 as the text "b'...'").
    """
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        raw.send(MALFORMED[case])
        assert raw.closed_within(2), case


def test_a_valid_subscribe_with_several_filters_is_answered(pki: Pki, broker: BrokerThread) -> None:
    """The strict decoder still reads a well-formed SUBSCRIBE of several filters and QoS."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        body = struct.pack("!H", 9) + string(DESIRE_A) + b"\x02" + string(f"{PREFIX}delta") + b"\0"
        raw.send(packet(SUBSCRIBE, 2, body))
        assert raw.expect(SUBACK).body == b"\x00\x09\x02\x00"
        raw.send(packet(UNSUBSCRIBE, 2, struct.pack("!H", 10) + string(DESIRE_A)))
        assert raw.expect(UNSUBACK).body == b"\x00\x0a"


def test_filters_over_the_level_and_length_budgets_are_refused(
    pki: Pki, broker: BrokerThread
) -> None:
    """A filter deeper than max_topic_levels (32) or longer than max_topic_length (1,024 bytes)
    gets SUBACK 0x80; one at the limits is granted; the connection stays open."""
    at_levels = PREFIX + "/".join(["x"] * (32 - 3))  # $baetyl/node/<id>/ is 3 levels
    assert at_levels.count("/") + 1 == 32
    at_length = PREFIX + "y" * (1024 - len(PREFIX))
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        for packet_id, (topic_filter, code) in enumerate(
            [(at_levels, 1), (at_levels + "/x", 0x80), (at_length, 1), (at_length + "y", 0x80)],
            start=1,
        ):
            raw.send(subscribe_packet(packet_id, topic_filter, 1))
            assert raw.expect(SUBACK).body == struct.pack("!HB", packet_id, code), topic_filter
        assert _still_open(raw)


def test_the_deep_filter_of_the_report_costs_nothing(pki: Pki, broker: BrokerThread) -> None:
    """The filter that cost about 1 GB and a second (64 KiB of `a/a/.../+`) is refused at once.

    A service may subscribe to anything, so only the budget stands in the way; the service
    stays connected and served.
    """
    deep = "a/" * 32767 + "+"
    assert len(deep) == 65535
    with RawClient(broker.port, pki.ca_file, pki.service) as raw:
        raw.send(connect_packet(pki.service.client_id))
        raw.expect(CONNACK)
        raw.send(subscribe_packet(1, deep, 1))
        assert raw.expect(SUBACK).body == b"\x00\x01\x80"
        assert _still_open(raw)


def test_a_filter_at_the_highest_configurable_budget_is_stored_and_matched(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """With the budgets at their ceiling (200 levels, 65,535 bytes) a filter at both limits is
    granted and matches; one level more is refused."""
    broker = start_broker(max_topic_levels=200, max_topic_length=65535)
    levels = [f"l{i}" for i in range(199)]
    levels[0] += "l" * (65535 - len("/".join([*levels, "e"])))
    topic = "/".join([*levels, "e"])
    deep_filter = "/".join([*levels, "+"])
    assert topic.count("/") + 1 == 200
    assert len(deep_filter) == len(topic) == 65535
    tool = connect(client_id="tool", plain=True, port=broker.ports["local"])
    assert tool.subscribe(deep_filter, 1) == [1]
    assert tool.subscribe("/".join(["+"] * 201), 1) == [0x80]
    tool.publish(topic, b"deep", qos=1)
    assert tool.receive().payload == b"deep"


def test_subscriptions_past_the_client_budget_are_refused(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """A node holds at most max_subscriptions; re-subscribing a held filter and subscribing after
    an unsubscribe still work, and a service gets service_max_subscriptions."""
    broker = start_broker(max_subscriptions=8, service_max_subscriptions=16)
    node = connect(pki.node_a, port=broker.port)
    for i in range(8):
        assert node.subscribe(f"{PREFIX}f{i}", 1) == [1]
    assert node.subscribe(f"{PREFIX}f8", 1) == [0x80]
    assert node.subscribe(f"{PREFIX}f0", 0) == [0]  # replacing a held one is not a new one
    node.client.unsubscribe(f"{PREFIX}f1")
    assert node.subscribe(f"{PREFIX}f8", 1) == [1]

    service = connect(pki.service, port=broker.port)
    for i in range(16):
        assert service.subscribe(f"svc/{i}", 1) == [1]
    assert service.subscribe("svc/16", 1) == [0x80]


def test_a_subscribe_with_more_filters_than_the_budget_closes_the_connection(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """One SUBSCRIBE listing more filters than the client may ever hold closes the connection:
    reading and answering 80,000 filters of one 256 KiB packet would stall the event loop."""
    broker = start_broker(max_subscriptions=8)
    with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
        raw.send(connect_packet(NODE_A))
        raw.expect(CONNACK)
        raw.send(packet(SUBSCRIBE, 2, _subscribe_body(*(f"{PREFIX}f{i}" for i in range(9)))))
        assert raw.closed_within(2)


def test_publish_to_a_topic_over_the_budgets_is_dropped(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """A PUBLISH to a topic deeper or longer than the budgets reaches no one; the connection
    stays (MQTT 3.1.1 has no negative PUBACK), like a publish the ACL refuses."""
    broker = start_broker()
    listener = connect(client_id="listener", plain=True, port=broker.ports["local"])
    assert listener.subscribe("#", 1) == [1]
    tool = connect(client_id="tool", plain=True, port=broker.ports["local"])
    tool.publish("/".join(["d"] * 33), b"too deep", qos=1)
    tool.publish("e" * 1025, b"too long", qos=1)
    tool.publish("/".join(["d"] * 32), b"within", qos=1)
    assert [m.payload for m in listener.drain()] == [b"within"]


def test_raw_publish_over_the_budget_is_acknowledged_and_dropped(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """The same refusal seen packet by packet: PUBACK, then nothing delivered."""
    with RawClient(broker.ports["local"], pki.ca_file, pki.node_a, plain=True) as raw:
        raw.send(connect_packet("tool"))
        raw.expect(CONNACK)
        raw.send(subscribe_packet(1, "#", 0))
        raw.expect(SUBACK)
        raw.send(publish_packet("/".join(["d"] * 40), b"x", 1, 5))
        assert raw.expect(4).body == b"\x00\x05"  # PUBACK
        raw.send(publish_packet("d/d", b"y", 0))
        assert raw.expect(PUBLISH).publish() == ("d/d", None, b"y")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"max_topic_levels": 7}, "broker.max_topic_levels"),
        ({"max_topic_levels": 201}, "broker.max_topic_levels"),
        ({"max_topic_length": 255}, "broker.max_topic_length"),
        ({"max_topic_length": 65536}, "broker.max_topic_length"),
        ({"max_subscriptions": 7}, "broker.max_subscriptions"),
        ({"max_subscriptions": 100, "service_max_subscriptions": 99}, "service_max_subscriptions"),
    ],
)
def test_budgets_out_of_range_are_refused_naming_the_key(
    overrides: dict[str, int], key: str
) -> None:
    """A budget that would break pybaetyl's own topics, or lift the ceilings, is a config error."""
    with pytest.raises(ValueError, match=key):
        BrokerSettings(**overrides)  # type: ignore[arg-type]


def test_wildcard_subscribe_finds_retained_messages_in_its_scope_only(
    start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """A wildcard filter whose first three levels are literal looks only at retained topics under
    them (a node's SUBSCRIBE once scanned every node's retained presence: 1.4 s for 32 filters
    over 10,000 nodes); filters with a wildcard earlier still see every match."""
    broker = start_broker()
    local = broker.ports["local"]
    publisher = connect(client_id="publisher", plain=True, port=local)
    for topic in ("r/a/b", "r/a/b/x", "r/a/b/x/y", "r/a/c/x", "r/z/b/x"):
        publisher.publish(topic, topic.encode(), qos=1, retain=True)
    publisher.publish("r/a/b/x/y", b"", qos=1, retain=True)  # cleared again
    for number, (topic_filter, expected) in enumerate(
        [
            ("r/a/b/+", {"r/a/b/x"}),
            ("r/a/b/#", {"r/a/b", "r/a/b/x"}),
            ("r/+/b/x", {"r/a/b/x", "r/z/b/x"}),
            ("r/a/+/x", {"r/a/b/x", "r/a/c/x"}),
            ("#", {"r/a/b", "r/a/b/x", "r/a/c/x", "r/z/b/x"}),
        ]
    ):
        reader = connect(client_id=f"reader{number}", plain=True, port=local)
        assert reader.subscribe(topic_filter, 1) == [1]
        assert {m.topic for m in reader.drain()} == expected, topic_filter
        reader.close()

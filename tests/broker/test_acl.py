"""Topic access as the broker enforces it: nodes stay in their own tree, operators only read."""

from __future__ import annotations

import pytest

from tests.broker.clients import Connect, MosquittoSub, MqttClient, mosquitto_pub
from tests.broker.helpers import NODE_A, NODE_B, BrokerThread, Pki, node_topic

DESIRE_A, REPORT_A = node_topic(NODE_A, "desire"), node_topic(NODE_A, "report")
DESIRE_B, REPORT_B = node_topic(NODE_B, "desire"), node_topic(NODE_B, "report")
DENIED = 0x80


def only_sentinel(client: MqttClient, topic: str) -> None:
    """The next message `client` gets is the sentinel on `topic`, and nothing else follows."""
    first = client.receive()
    assert (first.topic, first.payload) == (topic, b"sentinel"), f"unexpected {first}"
    assert client.drain(0.2) == []


@pytest.mark.parametrize(
    "topic_filter",
    [
        DESIRE_B,
        node_topic(NODE_B, "#"),
        "$baetyl/node/+/desire",
        "$baetyl/#",
        "#",
        "+/node/default.node-a/desire",
        REPORT_A,  # its own upstream: it would see its own (and nobody else's) reports
        node_topic(NODE_A, "+"),  # matches its own report
        node_topic(NODE_A, "#"),
        node_topic(NODE_A, "desire/+"),  # matches desire/get
        "$baetyl/node/default.node-a",
    ],
)
def test_node_cannot_subscribe_outside_its_downstream_topics(
    pki: Pki, connect: Connect, topic_filter: str
) -> None:
    """A node gets SUBACK 0x80 for other nodes' topics, wildcards, and its own upstream topics."""
    assert connect(pki.node_a).subscribe(topic_filter, 1) == [DENIED]


@pytest.mark.parametrize(
    "topic_filter", [DESIRE_A, node_topic(NODE_A, "report/+"), node_topic(NODE_A, "delta")]
)
def test_node_may_subscribe_to_its_downstream_topics(
    pki: Pki, connect: Connect, topic_filter: str
) -> None:
    """A node may subscribe to filters that match only its own downstream topics."""
    assert connect(pki.node_a).subscribe(topic_filter, 1) == [1]


def test_node_cannot_publish_into_another_nodes_topics(pki: Pki, connect: Connect) -> None:
    """Node A's publishes to node B's desire and report are dropped, and A's connection goes on.

    Pins stock hole: a dropped ``$`` publish ended the client's message loop (broker.py ≈772).
    """
    node_a, node_b, service = connect(pki.node_a), connect(pki.node_b), connect(pki.service)
    assert node_b.subscribe(DESIRE_B, 1) == [1]
    assert service.subscribe(REPORT_B, 1) == [1]
    assert service.subscribe(REPORT_A, 1) == [1]

    node_a.publish(DESIRE_B, b"forged desire", qos=1)
    node_a.publish(REPORT_B, b"forged report", qos=1)
    node_a.publish(REPORT_A, b"sentinel", qos=1)
    service.publish(DESIRE_B, b"sentinel", qos=1)

    only_sentinel(service, REPORT_A)
    only_sentinel(node_b, DESIRE_B)


def test_node_cannot_publish_to_its_own_downstream(pki: Pki, connect: Connect) -> None:
    """A node cannot forge its own desire: neither it nor a service subscriber receives it."""
    node, service = connect(pki.node_a), connect(pki.service)
    assert node.subscribe(DESIRE_A, 1) == [1]
    assert service.subscribe(DESIRE_A, 1) == [1]
    node.publish(DESIRE_A, b"forged", qos=1)
    service.publish(DESIRE_A, b"sentinel", qos=1)
    only_sentinel(node, DESIRE_A)
    only_sentinel(service, DESIRE_A)


def test_wildcard_subscribers_get_no_dollar_topics(pki: Pki, connect: Connect) -> None:
    """``#`` and ``+/...`` filters of a service or a local client never match ``$`` topics."""
    service = connect(pki.service)
    local = connect(client_id="local-tool", plain=True)
    for client in (service, local):
        assert client.subscribe("#", 1) == [1]
        assert client.subscribe("+/node/default.node-a/report", 1) == [1]
    connect(pki.node_a).publish(REPORT_A, b"report", qos=1)
    service.publish("plain/topic", b"sentinel", qos=1)
    only_sentinel(service, "plain/topic")
    only_sentinel(local, "plain/topic")


def test_retained_message_of_a_node_never_reaches_another_node(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """Node B, connecting and subscribing to its own topics, never gets node A's retained desire.

    Pins stock hole: on every connect, retained messages matching *any* client's filters were sent
    to the new client at QoS 0 without the receive ACL (broker.py ≈599-602).
    """
    operator = connect(pki.operator)
    assert operator.subscribe("$baetyl/#", 1) == [1]
    node_a = connect(pki.node_a)
    assert node_a.subscribe(DESIRE_A, 1) == [1]
    connect(pki.service).publish(DESIRE_A, b"secret", qos=1, retain=True)
    assert node_a.receive().payload == b"secret"

    node_b = connect(pki.node_b)
    assert node_b.drain() == []
    assert node_b.subscribe(DESIRE_B, 1) == [1]
    assert node_b.subscribe(node_topic(NODE_B, "report/+"), 1) == [1]
    assert node_b.subscribe(DESIRE_A, 1) == [DENIED]
    assert node_b.drain() == []

    late_a = connect(pki.node_a, client_id=NODE_A)  # takes over the first connection
    assert late_a.subscribe(DESIRE_A, 0) == [0]
    message = late_a.receive()
    assert (message.topic, message.payload, message.retain) == (DESIRE_A, b"secret", True)


def test_operator_reads_all_node_traffic_with_mosquitto_sub(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """``mosquitto_sub -t '$baetyl/#'`` with the operator certificate sees every node's traffic."""
    service, node_a = connect(pki.service), connect(pki.node_a)
    with MosquittoSub(broker.port, pki.ca_file, pki.operator, ["$baetyl/#"]) as sub:
        sub.wait_subscribed(lambda: service.publish("$baetyl/warm-up", b"x", qos=1))
        sub.drain(0.2)
        node_a.publish(REPORT_A, b"report-a", qos=1)
        service.publish(DESIRE_B, b"desire-b", qos=1)
        lines = sorted(sub.drain())
    assert lines == sorted([f"{REPORT_A} report-a", f"{DESIRE_B} desire-b"])


def test_operator_never_receives_resource_answers(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """Resource answers carry secret values in clear: an operator's ``$baetyl/#`` skips them.

    Live and retained alike; the node they are for still gets them, and the operator still sees
    the other downstream topics.
    """
    service, node_a = connect(pki.service), connect(pki.node_a)
    resource_a = node_topic(NODE_A, "resource")
    assert node_a.subscribe(resource_a, 1) == [1]
    service.publish(resource_a, b"retained-secret", qos=1, retain=True)
    assert node_a.receive().payload == b"retained-secret"
    with MosquittoSub(broker.port, pki.ca_file, pki.operator, ["$baetyl/#"]) as sub:
        sub.wait_subscribed(lambda: service.publish("$baetyl/warm-up", b"x", qos=1))
        sub.drain(0.2)
        service.publish(resource_a, b"live-secret", qos=1)
        service.publish(DESIRE_A, b"desire-a", qos=1)
        lines = sub.drain()
    assert node_a.receive().payload == b"live-secret"
    assert lines == [f"{DESIRE_A} desire-a"]


def test_operator_cannot_publish(pki: Pki, broker: BrokerThread, connect: Connect) -> None:
    """An operator's publish is accepted on the wire (QoS 1 PUBACK) but delivered to nobody."""
    node, service = connect(pki.node_a), connect(pki.service)
    assert node.subscribe(DESIRE_A, 1) == [1]
    result = mosquitto_pub(broker.port, pki.ca_file, pki.operator, DESIRE_A, "forged")
    assert result.returncode == 0, result.stderr
    service.publish(DESIRE_A, b"sentinel", qos=1)
    only_sentinel(node, DESIRE_A)


def test_local_plaintext_client_uses_ordinary_topics_only(pki: Pki, connect: Connect) -> None:
    """On the loopback listener, ordinary topics work and ``$`` topics are out of reach."""
    local = connect(client_id="local-tool", plain=True)
    node = connect(pki.node_a)
    assert node.subscribe(DESIRE_A, 1) == [1]

    assert local.subscribe("sensors/+", 1) == [1]
    local.publish("sensors/t1", b"21.5", qos=1)
    message = local.receive()
    assert (message.topic, message.payload, message.qos) == ("sensors/t1", b"21.5", 1)

    assert local.subscribe("$baetyl/#", 1) == [DENIED]
    assert local.subscribe(DESIRE_A, 1) == [DENIED]
    local.publish(DESIRE_A, b"forged", qos=1)
    connect(pki.service).publish(DESIRE_A, b"sentinel", qos=1)
    only_sentinel(node, DESIRE_A)

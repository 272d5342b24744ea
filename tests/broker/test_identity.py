"""Who may connect: a certificate from our CA, valid and unrevoked, and the client id it names."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import EmbeddedBroker
from tests.broker.clients import (
    CONNACK_NOT_AUTHORIZED,
    Connect,
    MosquittoSub,
    MqttClient,
    mosquitto_pub,
)
from tests.broker.helpers import NODE_A, WAIT, BrokerThread, Creds, Pki, node_topic
from tests.support.polling import until_blocking

DESIRE_A = node_topic(NODE_A, "desire")
REPORT_A = node_topic(NODE_A, "report")


def test_node_exchanges_messages_on_its_own_topics_with_paho(pki: Pki, connect: Connect) -> None:
    """A node receives its desire and publishes its report, twice on one connection.

    Pins stock hole: a client PUBLISH to a ``$`` topic is dropped and ends that client's message
    loop (broker.py ≈772), so a second report would never arrive.
    """
    node, service = connect(pki.node_a), connect(pki.service)
    assert node.subscribe(DESIRE_A, 1) == [1]
    assert service.subscribe(REPORT_A, 1) == [1]

    service.publish(DESIRE_A, b"desired", qos=1)
    node.publish(REPORT_A, b"first", qos=1)
    node.publish(REPORT_A, b"second", qos=1)

    assert node.receive().payload == b"desired"
    assert [service.receive().payload for _ in range(2)] == [b"first", b"second"]


def test_node_exchanges_messages_with_mosquitto_clients(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """mosquitto_sub and mosquitto_pub with a node certificate work on the node's own topics."""
    service = connect(pki.service)
    assert service.subscribe(REPORT_A, 1) == [1]
    published = mosquitto_pub(broker.port, pki.ca_file, pki.node_a, REPORT_A, "r1\nr2\n")
    assert published.returncode == 0, published.stderr
    assert [service.receive().payload for _ in range(2)] == [b"r1", b"r2"]

    with MosquittoSub(broker.port, pki.ca_file, pki.node_a, [DESIRE_A]) as sub:
        first = sub.wait_subscribed(lambda: service.publish(DESIRE_A, b"desired", qos=1))
        assert first == f"{DESIRE_A} desired"


def _never_connects(client: MqttClient) -> None:
    result = client.try_connect(timeout=1.5)
    assert result is None or result[0] != 0, f"{client.client_id} was accepted: {result}"


@pytest.mark.parametrize(
    "who",
    [
        pytest.param(lambda pki: None, id="no-certificate"),
        pytest.param(lambda pki: pki.foreign, id="foreign-ca"),
        pytest.param(lambda pki: pki.expired, id="expired"),
    ],
)
def test_refuses_a_connection_without_a_valid_certificate(
    pki: Pki, connect: Connect, who: Callable[[Pki], Creds | None]
) -> None:
    """A client without a certificate, or with one from another CA or expired, never gets CONNACK 0.

    Pins stock hole: the TLS context asks for a client certificate but accepts none
    (CERT_OPTIONAL, broker.py ≈317).
    """
    creds = who(pki)
    client = connect(creds, client_id=creds.client_id if creds else NODE_A, connected=False)
    _never_connects(client)


def test_refuses_a_revoked_certificate_soon_after_revocation(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """Within about a second of ``ca.revoke`` the broker refuses the certificate."""
    creds = pki.new_node()
    connect(creds).close()
    pki.ca.revoke(creds.serial)
    started = time.monotonic()

    def refused() -> bool:
        result = connect(creds, connected=False).try_connect(timeout=1)
        return result is None or result[0] != 0

    assert until_blocking(refused, 3, every=0.05)
    assert time.monotonic() - started < 2.5


def test_refuses_a_client_id_that_is_not_the_certificates(pki: Pki, connect: Connect) -> None:
    """A node certificate with another client id gets CONNACK 5 (paho: "Not authorized")."""
    client = connect(pki.node_a, client_id="default.node-b", connected=False)
    assert client.try_connect() == (CONNACK_NOT_AUTHORIZED, False)


def test_mosquitto_client_with_a_wrong_client_id_is_not_authorised(
    pki: Pki, broker: BrokerThread
) -> None:
    """mosquitto_pub reports "not authorised" when the client id is not the certificate's."""
    result = mosquitto_pub(
        broker.port, pki.ca_file, pki.node_a, REPORT_A, "x", client_id="default.node-b"
    )
    assert result.returncode != 0
    assert "not authori" in result.stderr.lower()


def test_operator_and_service_may_suffix_their_client_id(pki: Pki, connect: Connect) -> None:
    """Operators and services connect as ``<CN>`` or ``<CN>/<suffix>``, not as a node."""
    connect(pki.operator, client_id="operator:dbg/laptop")
    connect(pki.service, client_id="service:shadow/replica-1")
    assert connect(pki.service, client_id=NODE_A, connected=False).try_connect() == (
        CONNACK_NOT_AUTHORIZED,
        False,
    )


def test_resume_with_another_nodes_certificate_is_refused(pki: Pki, connect: Connect) -> None:
    """Node B's certificate cannot resume node A's persistent session; A's session stays intact.

    Pins stock hole: a resumed session keeps the previous connection's ssl_object
    (broker.py ≈517-530), so B would have been accepted as A with session_present=1.
    """
    first = connect(pki.node_a, clean_session=False)
    assert first.subscribe(DESIRE_A, 1) == [1]
    first.close()

    impostor = connect(pki.node_b, client_id=NODE_A, clean_session=False, connected=False)
    assert impostor.try_connect() == (CONNACK_NOT_AUTHORIZED, False)
    impostor.close()

    service = connect(pki.service)
    service.publish(DESIRE_A, b"while away", qos=1)
    again = connect(pki.node_a, clean_session=False, connected=False)
    assert again.try_connect() == (0, True)
    message = again.receive()
    assert (message.topic, message.payload, message.qos) == (DESIRE_A, b"while away", 1)


def test_refused_impostor_does_not_disturb_the_connected_owner(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """B's certificate with A's client id and clean_session=1 is refused and A keeps receiving.

    Pins stock hole: the session of that client id is deleted before authentication
    (broker.py ≈511), so the connected owner silently loses its subscriptions.
    """
    owner = connect(pki.node_a)
    assert owner.subscribe(DESIRE_A, 1) == [1]
    impostor = connect(pki.node_b, client_id=NODE_A, connected=False)
    assert impostor.try_connect() == (CONNACK_NOT_AUTHORIZED, False)

    connect(pki.service).publish(DESIRE_A, b"still yours", qos=1)
    assert owner.receive().payload == b"still yours"
    assert not owner.disconnected.is_set()
    assert broker.call(_connected).count(NODE_A) == 1


async def _connected(broker: EmbeddedBroker) -> list[str]:
    return broker.connected()


def test_plaintext_client_cannot_use_a_node_client_id(pki: Pki, connect: Connect) -> None:
    """On the loopback plaintext listener a node's client id is refused (CONNACK 5)."""
    client = connect(client_id=NODE_A, plain=True, connected=False)
    assert client.try_connect() == (CONNACK_NOT_AUTHORIZED, False)


def test_websocket_listener_requires_a_node_certificate(
    pki: Pki, start_broker: Callable[..., BrokerThread], tmp_path: Path
) -> None:
    """Over wss a node connects with its certificate, and a client without one is refused."""
    broker = start_broker(ws_port=0)
    port = broker.ports["wss"]
    clients = [
        MqttClient(port, NODE_A, ca=pki.ca_file, creds=pki.node_a, transport="websockets"),
        MqttClient(port, NODE_A, ca=pki.ca_file, transport="websockets"),
    ]
    try:
        node, anonymous = clients
        node.connect()
        assert node.subscribe(DESIRE_A, 1) == [1]
        broker.call(lambda b: b.publish(DESIRE_A, b"over ws", qos=1))
        assert node.receive().payload == b"over ws"
        result = anonymous.try_connect(timeout=WAIT)
        assert result is None or result[0] != 0
    finally:
        for client in clients:
            client.close()

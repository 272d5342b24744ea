"""Revocation and server certificate rotation, both without a restart."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from broker import (
    BrokerStats,
    DisconnectReason,
    EmbeddedBroker,
    EventKind,
    RefusalReason,
    TLSFiles,
)
from tests.broker.clients import Connect, MqttClient
from tests.broker.helpers import (
    BrokerThread,
    Pki,
    node_topic,
    peer_serial,
    write_server_cert,
)
from tests.broker.rawmqtt import CONNACK, RawClient, connect_packet
from tests.support.polling import until_blocking


def _refused(client: MqttClient) -> bool:
    result = client.try_connect(timeout=1.5)
    return result is None or result[0] != 0


def test_revoked_node_is_disconnected_and_cannot_come_back(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """``ca.revoke`` rewrites crl.pem; within about a second the node is dropped (revoked)."""
    creds = pki.new_node()
    node = connect(creds)
    assert node.subscribe(node_topic(creds.client_id, "desire"), 1) == [1]
    bystander = connect(pki.node_b)

    pki.ca.revoke(creds.serial)
    assert node.disconnected.wait(1.5), "the revoked node is still connected"
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert (event.client_id, event.reason) == (creds.client_id, DisconnectReason.REVOKED)
    assert _refused(connect(creds, connected=False))
    assert not bystander.disconnected.is_set()


def test_reload_applies_a_revocation_at_once(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect
) -> None:
    """``await broker.reload()`` drops revoked sessions without waiting for the file watcher."""
    broker = start_broker(crl_poll_interval=60)
    creds = pki.new_node()
    node = connect(creds, port=broker.port)
    pki.ca.revoke(creds.serial)
    assert not node.disconnected.wait(0.3)  # the watcher is asleep for a minute

    broker.call(lambda b: b.reload())
    assert node.disconnected.wait(1)
    event = broker.wait_event(lambda e: e.kind is EventKind.DISCONNECTED)
    assert event.reason == DisconnectReason.REVOKED
    assert _refused(connect(creds, connected=False, port=broker.port))


def test_unreadable_crl_keeps_the_previous_tls_files(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect, tmp_path: Path
) -> None:
    """A crl.pem that cannot be loaded (half written) leaves the broker serving as before."""
    crl = tmp_path / "crl.pem"
    shutil.copyfile(pki.ca.crl_path, crl)
    files = TLSFiles(ca=pki.files.ca, cert=pki.files.cert, key=pki.files.key, crl=crl)
    broker = start_broker(files=files)
    existing = connect(pki.node_a, port=broker.port)

    crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")
    assert not existing.disconnected.wait(0.4)
    connect(pki.node_b, port=broker.port)  # new connections still accepted

    creds = pki.new_node()
    pki.ca.revoke(creds.serial)
    shutil.copyfile(pki.ca.crl_path, crl)  # a good file again is picked up
    assert until_blocking(lambda: _refused(connect(creds, connected=False, port=broker.port)), 3)


def test_server_certificate_rotates_without_restart(
    pki: Pki, start_broker: Callable[..., BrokerThread], connect: Connect, tmp_path: Path
) -> None:
    """New connections get a rewritten server certificate while existing connections stay up."""
    files = pki.server_files(tmp_path / "server")
    broker = start_broker(files=files)
    node = connect(pki.node_a, port=broker.port)
    desire = node_topic(pki.node_a.client_id, "desire")
    old_serial = peer_serial(node.client.socket())

    new_serial = write_server_cert(pki.ca, files.cert.parent)
    assert new_serial != old_serial

    def new_connection_serial() -> int:
        with RawClient(broker.port, pki.ca_file, pki.node_b) as raw:
            return peer_serial(raw.sock)

    assert until_blocking(lambda: new_connection_serial() == new_serial, 3)
    assert not node.disconnected.is_set()
    assert node.subscribe(desire, 1) == [1]
    broker.call(lambda b: b.publish(desire, b"still here", qos=1))
    assert node.receive().payload == b"still here"
    assert peer_serial(node.client.socket()) == old_serial


def test_a_connect_after_the_revocation_is_refused_though_the_handshake_was_before(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """A handshake finished under the old CRL, the CRL reloaded, then CONNECT: CONNACK 5.

    The reload's sweep drops sessions only; this connection had none yet and became a live
    session of a revoked certificate.
    """
    broker = start_broker(crl_poll_interval=60)
    creds = pki.new_node()

    async def stats(b: EmbeddedBroker) -> BrokerStats:
        return b.stats()

    with RawClient(broker.port, pki.ca_file, creds) as client:
        # The handshake is over on the broker's side too: the connection is counted as open.
        assert until_blocking(lambda: broker.call(stats).open_connections == 1)
        pki.ca.revoke(creds.serial)
        broker.call(lambda b: b.reload())
        client.send(connect_packet(creds.client_id))
        assert client.expect(CONNACK).body == b"\x00\x05"  # not authorized
        assert client.closed_within(1.0)
    assert broker.call(stats).refusals[RefusalReason.REVOKED] == 1
    assert creds.client_id not in broker.call(_connected)


async def _connected(broker: EmbeddedBroker) -> list[str]:
    return broker.connected()

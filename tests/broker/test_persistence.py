"""Persistent sessions and retained messages across a graceful stop and start of the broker.

Each test stops the broker for real (its event loop and listeners gone) and starts a new one on
the same sessions file, with paho and raw MQTT clients on both sides.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import BrokerStartError, Role
from broker.snapshot import Queued, SavedSession, Snapshot, read_snapshot, write_snapshot
from tests.broker.clients import Connect
from tests.broker.helpers import (
    HOST,
    NODE_A,
    NODE_B,
    BrokerThread,
    Pki,
    broker_settings,
    node_topic,
)
from tests.broker.rawmqtt import (
    CONNACK,
    PINGREQ,
    PINGRESP,
    PUBACK,
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

UPLINK = "$baetyl/node/+/up/#"
DESIRE_A = node_topic(NODE_A, "desire")
DESIRE_B = node_topic(NODE_B, "desire")
REPORT_A = node_topic(NODE_A, "report")
MESSAGES = 300


@contextlib.contextmanager
def running(pki: Pki, sessions: Path, **overrides: object) -> Iterator[BrokerThread]:
    """A broker on ``sessions``, stopped gracefully (which saves them) on leaving the block."""
    with BrokerThread(broker_settings(**overrides), pki.files, sessions=sessions) as broker:
        yield broker


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    return tmp_path / "broker" / "sessions.msgpack"


def uplink(index: int) -> str:
    return node_topic(NODE_A, f"up/telemetry/{index}")


def _pid(packet_id: int) -> bytes:
    return struct.pack("!H", packet_id)


def test_an_offline_consumer_gets_every_queued_message_in_order_after_a_restart(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """An operator's persistent session (QoS 1 on every node's uplink), offline while a node
    publishes: after a graceful restart it is resumed without subscribing again, and gets
    every message in order, then the new ones."""
    with running(pki, sessions) as broker:
        consumer = connect(pki.operator, port=broker.port, clean_session=False)
        assert consumer.subscribe(UPLINK, 1) == [1]
        consumer.close()
        node = connect(pki.node_a, port=broker.port)
        for index in range(MESSAGES):
            node.publish(uplink(index), str(index).encode(), qos=1)
        node.close()
    assert sessions.stat().st_mode & 0o777 == 0o600
    assert sessions.parent.stat().st_mode & 0o777 == 0o700

    with running(pki, sessions) as broker:
        consumer = connect(pki.operator, port=broker.port, clean_session=False, connected=False)
        assert consumer.connect() is True  # session present
        got = [consumer.receive() for _ in range(MESSAGES)]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            (uplink(i), str(i).encode(), 1) for i in range(MESSAGES)
        ]
        node = connect(pki.node_a, port=broker.port)
        node.publish(uplink(MESSAGES), b"after", qos=1)  # the subscription is live
        assert consumer.receive().payload == b"after"
        assert consumer.drain() == []


def test_sessions_connected_at_the_stop_are_saved_and_clean_ones_are_not(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """A persistent session still connected when the broker stops is saved with its
    subscriptions; a clean session is not, nor anything for it."""
    with running(pki, sessions) as broker:
        kept = connect(pki.node_b, port=broker.port, clean_session=False)
        assert kept.subscribe(DESIRE_B, 1) == [1]
        clean = connect(pki.node_a, port=broker.port)
        assert clean.subscribe(DESIRE_A, 1) == [1]
    snapshot = read_snapshot(sessions)
    assert [(s.client_id, s.role, s.principal) for s in snapshot.sessions] == [
        (NODE_B, Role.NODE, NODE_B)
    ]
    assert snapshot.sessions[0].subscriptions == [(DESIRE_B, 1)]
    kept.close()
    clean.close()

    with running(pki, sessions) as broker:
        assert broker.broker.stats().sessions == 1
        kept = connect(pki.node_b, port=broker.port, clean_session=False, connected=False)
        assert kept.connect() is True
        clean = connect(pki.node_a, port=broker.port, connected=False)
        assert clean.connect() is False
        service = connect(pki.service, port=broker.port)
        service.publish(DESIRE_B, b"to b", qos=1)
        service.publish(DESIRE_A, b"to a", qos=1)
        assert kept.receive().payload == b"to b"
        assert clean.drain() == []  # its subscription did not survive


def test_the_stop_publishes_the_wills_of_the_clients_it_cuts_before_saving(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """A graceful stop closes each connection as a lost one: a node's will goes to the offline
    persistent subscribers, whose saved queue holds it after the restart."""
    presence_a = node_topic(NODE_A, "presence")
    with running(pki, sessions) as broker:
        watcher = connect(pki.operator, port=broker.port, clean_session=False)
        assert watcher.subscribe(presence_a, 1) == [1]
        watcher.close()
        raw = RawClient(broker.port, pki.ca_file, pki.node_a)
        raw.send(connect_packet(NODE_A, will=(presence_a, b"offline", 1)))
        assert raw.expect(CONNACK).body == b"\x00\x00"
    raw.sock.close()
    with running(pki, sessions) as broker:
        watcher = connect(pki.operator, port=broker.port, clean_session=False, connected=False)
        assert watcher.connect() is True
        message = watcher.receive()
        assert (message.topic, message.payload, message.retain) == (presence_a, b"offline", False)


def test_messages_in_flight_are_resent_after_a_restart(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """An unacknowledged QoS 1 message is resent with DUP and its packet id; a QoS 2 message
    that got its PUBREC gets its PUBREL, not the PUBLISH; an incoming QoS 2 message awaiting
    its PUBREL is not routed a second time when resent after the restart."""
    with running(pki, sessions) as broker:
        service = connect(pki.service, port=broker.port)
        assert service.subscribe(REPORT_A, 2) == [2]
        with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
            raw.send(connect_packet(NODE_A, clean_session=False))
            assert raw.expect(CONNACK).body == b"\x00\x00"
            raw.send(subscribe_packet(1, DESIRE_A, 2))
            assert raw.expect(SUBACK).body == b"\x00\x01\x02"
            service.publish(DESIRE_A, b"one", qos=1)
            service.publish(DESIRE_A, b"two", qos=2)
            one, two = raw.expect(PUBLISH), raw.expect(PUBLISH)
            _topic, one_id, _payload = one.publish()
            _topic, two_id, _payload = two.publish()
            assert one_id is not None
            assert two_id is not None
            raw.send(ack_packet(PUBREC, two_id))
            assert raw.expect(PUBREL).body == _pid(two_id)
            raw.send(publish_packet(REPORT_A, b"once", 2, 7))
            assert raw.expect(PUBREC).body == _pid(7)
            assert service.receive().payload == b"once"
        # gone without PUBACK, PUBCOMP or PUBREL
        service.close()

    with running(pki, sessions) as broker:
        service = connect(pki.service, port=broker.port)
        assert service.subscribe(REPORT_A, 2) == [2]
        with RawClient(broker.port, pki.ca_file, pki.node_a) as raw:
            raw.send(connect_packet(NODE_A, clean_session=False))
            assert raw.expect(CONNACK).body == b"\x01\x00"
            again = raw.expect(PUBLISH)
            assert again.publish() == (DESIRE_A, one_id, b"one")
            assert (again.qos, again.dup) == (1, True)
            assert raw.expect(PUBREL).body == _pid(two_id)
            raw.send(ack_packet(PUBACK, one_id) + ack_packet(PUBCOMP, two_id))
            raw.send(publish_packet(REPORT_A, b"once", 2, 7, dup=True))
            assert raw.expect(PUBREC).body == _pid(7)
            raw.send(ack_packet(PUBREL, 7))
            assert raw.expect(PUBCOMP).body == _pid(7)
            raw.send(packet(PINGREQ, 0, b""))
            assert raw.expect(PINGRESP).kind == PINGRESP  # nothing else was resent
            assert service.drain() == []  # the resent QoS 2 message was not routed again

    # Acknowledged: nothing is held for the session any more.
    assert read_snapshot(sessions).messages == 0


def test_retained_messages_survive_a_restart(pki: Pki, connect: Connect, sessions: Path) -> None:
    """Retained messages are saved as they are, a cleared one stays cleared."""
    delta_a = node_topic(NODE_A, "delta")
    with running(pki, sessions) as broker:
        service = connect(pki.service, port=broker.port)
        service.publish(DESIRE_A, b"kept", qos=1, retain=True)
        service.publish(delta_a, b"cleared", qos=1, retain=True)
        service.publish(delta_a, b"", qos=1, retain=True)
    with running(pki, sessions) as broker:
        node = connect(pki.node_a, port=broker.port)
        assert node.subscribe(DESIRE_A, 1) == [1]
        assert node.subscribe(delta_a, 1) == [1]
        message = node.receive()
        assert (message.topic, message.payload, message.retain) == (DESIRE_A, b"kept", True)
        assert node.drain() == []


def test_a_restored_session_is_resumed_only_by_its_own_principal(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """A session saved as made by node B under node A's client id (a file edited by hand) is
    not resumed by node A: its queue is not delivered and the CONNACK says no session."""
    forged = SavedSession(
        NODE_A,
        Role.NODE,
        NODE_B,
        subscriptions=[(DESIRE_A, 1)],
        queue=[Queued(DESIRE_A, 1, b"for b's eyes", False)],
    )
    write_snapshot(sessions, Snapshot(sessions=[forged]))
    with running(pki, sessions) as broker:
        node = connect(pki.node_a, port=broker.port, clean_session=False, connected=False)
        assert node.connect() is False
        assert node.drain() == []


def test_restored_subscriptions_pass_the_acl_again(
    pki: Pki, connect: Connect, sessions: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved subscription the ACL does not allow (another node's topics) is dropped at start;
    the others are kept."""
    saved = SavedSession(
        NODE_A, Role.NODE, NODE_A, subscriptions=[(DESIRE_A, 1), (DESIRE_B, 1), ("#", 1)]
    )
    write_snapshot(sessions, Snapshot(sessions=[saved]))
    with caplog.at_level(logging.WARNING, "broker"), running(pki, sessions) as broker:
        node = connect(pki.node_a, port=broker.port, clean_session=False, connected=False)
        assert node.connect() is True
        service = connect(pki.service, port=broker.port)
        service.publish(DESIRE_B, b"not for a", qos=1)
        service.publish(DESIRE_A, b"for a", qos=1)
        assert node.receive().payload == b"for a"
        assert node.drain() == []
    assert "dropped 2 restored subscriptions" in caplog.text


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "empty"])
def test_a_corrupt_file_is_moved_aside_and_the_broker_starts_empty(
    pki: Pki, connect: Connect, sessions: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """One error line naming the file and where it went; the broker serves, without sessions,
    and its next graceful stop writes a good file."""
    saved = SavedSession(NODE_A, Role.NODE, NODE_A, subscriptions=[(DESIRE_A, 1)])
    write_snapshot(sessions, Snapshot(sessions=[saved]))
    good = sessions.read_bytes()
    damaged = {
        "garbage": b"\x93not a snapshot at all" * 10,
        "truncated": good[: len(good) - 10],
        "flipped": good[:40] + bytes([good[40] ^ 0x80]) + good[41:],
        "empty": b"",
    }[damage]
    sessions.write_bytes(damaged)
    with caplog.at_level(logging.ERROR), running(pki, sessions) as broker:
        assert broker.broker.stats().sessions == 0
        node = connect(pki.node_a, port=broker.port, clean_session=False, connected=False)
        assert node.connect() is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert str(sessions) in errors[0].getMessage()
    assert ".corrupt" in errors[0].getMessage()
    assert sessions.with_name(sessions.name + ".corrupt").read_bytes() == damaged
    assert [s.client_id for s in read_snapshot(sessions).sessions] == [NODE_A]


def test_once_loaded_the_file_holds_no_message_until_the_next_graceful_stop(
    pki: Pki, connect: Connect, sessions: Path
) -> None:
    """What a crash of the running broker would find: the sessions and subscriptions, and none
    of the messages held for them (they may be delivered by then). A graceful stop saves those
    not delivered again."""
    queued = [Queued(DESIRE_A, 1, f"m{i}".encode(), False) for i in range(3)]
    saved = SavedSession(NODE_A, Role.NODE, NODE_A, subscriptions=[(DESIRE_A, 1)], queue=queued)
    write_snapshot(sessions, Snapshot(sessions=[saved]))
    with running(pki, sessions):
        on_disk = read_snapshot(sessions)
        assert [(s.client_id, s.subscriptions) for s in on_disk.sessions] == [
            (NODE_A, [(DESIRE_A, 1)])
        ]
        assert on_disk.messages == 0
    assert read_snapshot(sessions).sessions[0].queue == queued  # never delivered: saved again


def test_a_broker_that_fails_to_start_keeps_the_file_whole(pki: Pki, sessions: Path) -> None:
    """A port in use: the start fails, and the messages in the file are still there."""
    queued = [Queued(DESIRE_A, 1, b"m", False)]
    write_snapshot(
        sessions, Snapshot(sessions=[SavedSession(NODE_A, Role.NODE, NODE_A, queue=queued)])
    )
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        with pytest.raises(BrokerStartError):
            BrokerThread(
                broker_settings(port=holder.getsockname()[1]), pki.files, sessions=sessions
            ).__enter__()
    assert read_snapshot(sessions).sessions[0].queue == queued

"""The embedded broker speaks MQTT 3.1.1 only: other versions get CONNACK 0x01 and a log line.

An MQTT 5 CONNECT used to be parsed as 3.1.1 (its properties read as the client id) and hang
until the CONNECT timeout: no CONNACK, and an empty reason in the log.
"""

from __future__ import annotations

import logging
import struct
import subprocess

import pytest

from tests.broker.clients import require_mosquitto
from tests.broker.helpers import HOST, BrokerThread, Pki
from tests.broker.rawmqtt import CONNACK, CONNECT, RawClient, connect_packet, packet
from tests.support.polling import until_blocking

REFUSED = b"\x00\x01"  # no session present, return code 0x01: unacceptable protocol version


def _string(value: str) -> bytes:
    return struct.pack("!H", len(value)) + value.encode()


def connect_v(name: str, level: int, client_id: str, *, properties: bytes | None = None) -> bytes:
    """A CONNECT with protocol ``name`` and ``level``; MQTT 5's carries ``properties``."""
    header = _string(name) + bytes([level, 0x02]) + struct.pack("!H", 60)
    if properties is not None:
        header += bytes([len(properties)]) + properties
    return packet(CONNECT, 0, header + _string(client_id))


def refusal(caplog: pytest.LogCaptureFixture) -> str:
    """The one log line of a refused CONNECT (logged by the broker's thread after the close)."""

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused CONNECT" in r.getMessage()]

    assert until_blocking(lambda: bool(lines())), "no refusal was logged"
    (line,) = lines()
    return line


@pytest.mark.parametrize(
    ("version", "said", "heard"),
    [
        ("5", "MQTT 5 (protocol 'MQTT' level 5)", "unsupported protocol version"),
        ("31", "MQTT 3.1 (protocol 'MQIsdp' level 3)", "unacceptable protocol version"),
    ],
)
def test_mosquitto_clients_of_other_versions_hear_unacceptable_protocol_version(
    pki: Pki,
    broker: BrokerThread,
    caplog: pytest.LogCaptureFixture,
    version: str,
    said: str,
    heard: str,
) -> None:
    """mosquitto_pub -V 5 and -V 31 are told why, and the log names the version and what to do."""
    require_mosquitto()
    caplog.set_level(logging.INFO)
    creds = pki.node_a
    result = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(broker.port), "-V", version,
         "--cafile", str(pki.ca_file), "--cert", str(creds.cert), "--key", str(creds.key),
         "-i", creds.client_id, "-t", "$baetyl/node/default.node-a/report", "-m", "{}"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert heard in result.stderr.lower(), result.stderr  # what libmosquitto makes of 0x01
    line = refusal(caplog)
    assert said in line
    assert f"refused CONNECT from {HOST}:" in line
    assert "answered CONNACK 0x01" in line
    assert "the embedded broker speaks MQTT 3.1.1 only" in line
    assert "bus.mode=external" in line


@pytest.mark.parametrize(
    ("name", "level", "properties"),
    [
        ("MQTT", 5, b"\x21\x00\x0a"),  # MQTT 5 with a Receive Maximum property
        ("MQTT", 5, b""),
        ("MQIsdp", 3, None),
        ("MQTT", 3, None),
        ("MQTT", 6, None),
    ],
)
def test_raw_connects_of_other_levels_get_connack_1_then_close(
    pki: Pki, broker: BrokerThread, name: str, level: int, properties: bytes | None
) -> None:
    """CONNACK return code 0x01 [MQTT-3.1.2-2], then the connection is closed."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(connect_v(name, level, pki.node_a.client_id, properties=properties))
        assert client.expect(CONNACK).body == REFUSED
        assert client.closed_within(2.0)


def test_a_connect_that_is_not_mqtt_is_closed_without_a_connack(
    pki: Pki, broker: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """A protocol name that is not MQTT's gets no answer at all [MQTT-3.1.2-1], and a log line."""
    caplog.set_level(logging.INFO)
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(connect_v("AMQP", 4, pki.node_a.client_id))
        assert client.closed_within(2.0)
    line = refusal(caplog)
    assert "the protocol name 'AMQP' is not MQTT's" in line


def test_mqtt_311_still_connects_after_a_refused_client(pki: Pki, broker: BrokerThread) -> None:
    """The check lets 3.1.1 through, whole: the same client id connects with CONNACK 0."""
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(connect_v("MQTT", 5, pki.node_a.client_id, properties=b""))
        assert client.expect(CONNACK).body == REFUSED
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(connect_packet(pki.node_a.client_id))
        assert client.expect(CONNACK).body == b"\x00\x00"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (packet(3, 0, _string("t") + b"x"), "the first packet is of type 3, not CONNECT"),
        (b"\x10\x02\x00\x04", "too short to name its protocol and level"),
        # MQTT 3.1.1 named, then no flags, keepalive or client id
        (packet(CONNECT, 0, _string("MQTT") + bytes([4])), "shorter than its fields say"),
    ],
)  # fmt: skip
def test_a_first_packet_that_is_no_whole_connect_is_closed_at_once(
    pki: Pki, broker: BrokerThread, caplog: pytest.LogCaptureFixture, data: bytes, said: str
) -> None:
    """Closed without a CONNACK as soon as it is read, not at the CONNECT timeout (2 s here),
    and logged with the reason."""
    caplog.set_level(logging.INFO)
    with RawClient(broker.port, pki.ca_file, pki.node_a) as client:
        client.send(data)
        assert client.closed_within(1.0)
    assert said in refusal(caplog)

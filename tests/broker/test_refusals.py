"""Refused connections are counted by reason, logged at a bounded rate, and leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from broker import BrokerStats, EmbeddedBroker, RefusalReason
from tests.broker.clients import Connect
from tests.broker.helpers import HOST, NODE_A, BrokerThread, Creds, Pki
from tests.support.polling import until_blocking


def handshake(port: int, pki: Pki, creds: Creds | None) -> None:
    """A TLS handshake with the broker, with ``creds`` or no client certificate, then close.

    With TLS 1.3 the client's side ends before the server has checked the certificate; reading
    waits for the server's verdict (an alert, or silence for a second when it was accepted).
    """
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if creds is not None:
        context.load_cert_chain(creds.cert, creds.key)
    with socket.create_connection((HOST, port), timeout=3) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.settimeout(1.0)
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass  # refused: what these tests make happen


def stats(broker: BrokerThread) -> BrokerStats:
    async def get(b: EmbeddedBroker) -> BrokerStats:
        return b.stats()

    return broker.call(get)


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param(lambda pki: None, RefusalReason.NO_CERTIFICATE, id="no-certificate"),
        pytest.param(lambda pki: pki.foreign, RefusalReason.UNKNOWN_CA, id="foreign-ca"),
        pytest.param(lambda pki: pki.expired, RefusalReason.EXPIRED, id="expired"),
    ],
)
def test_a_refused_handshake_is_counted_by_its_reason(
    pki: Pki,
    broker: BrokerThread,
    who: Callable[[Pki], Creds | None],
    reason: RefusalReason,
) -> None:
    """Each refused handshake adds one to its reason's count, and to no other."""
    for _ in range(3):
        handshake(broker.port, pki, who(pki))
    assert until_blocking(lambda: stats(broker).refusals[reason] == 3)
    others = {r: n for r, n in stats(broker).refusals.items() if r != reason}
    assert set(others.values()) == {0}


def test_a_revoked_certificate_is_counted_as_revoked(pki: Pki, broker: BrokerThread) -> None:
    """A certificate on the CRL is refused in the handshake and counted as ``revoked``."""
    creds = pki.new_node()
    handshake(broker.port, pki, creds)
    assert sum(stats(broker).refusals.values()) == 0  # accepted while valid
    pki.ca.revoke(creds.serial)

    def refused() -> bool:
        handshake(broker.port, pki, creds)
        return stats(broker).refusals[RefusalReason.REVOKED] > 0

    assert until_blocking(refused, 3, every=0.1)


def test_a_connect_refusal_is_counted(pki: Pki, broker: BrokerThread, connect: Connect) -> None:
    """A valid certificate with another node's client id is refused at CONNECT and counted."""
    client = connect(pki.node_a, client_id="default.node-b", connected=False)
    client.try_connect()
    assert until_blocking(lambda: stats(broker).refusals[RefusalReason.CLIENT_ID] == 1)


def test_refusals_from_one_address_are_one_line_per_interval_with_a_count(
    pki: Pki, start_broker: Callable[..., BrokerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty refusals from one address in an interval: one line at once, one with the count.

    A revoked node retrying or a scan must not write a line per attempt, yet the operator sees
    the source, the reason and how many.
    """
    broker = start_broker(refusal_log_interval=1.0)
    with caplog.at_level(logging.WARNING, logger="broker.refusals"):
        for _ in range(20):
            handshake(broker.port, pki, None)
        assert until_blocking(lambda: stats(broker).refusals[RefusalReason.NO_CERTIFICATE] == 20)
        assert until_blocking(lambda: any("19 more" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.refusals"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"refused a connection from {HOST}: no-certificate")
    assert lines[1].startswith(f"refused 19 more connections from {HOST} in the last")
    assert lines[1].endswith(": no-certificate")


def test_a_refused_handshake_is_freed_without_the_garbage_collector(
    pki: Pki, broker: BrokerThread
) -> None:
    """With the collector off, the SSL objects of refused handshakes are freed all the same.

    Held in reference cycles (the exception's traceback, asyncio's waiter), they waited for a
    full collection, which the server's gc.freeze policy postpones for minutes: a flood of
    unauthenticated connections grew memory by 11.5 KiB each.
    """
    seen: list[weakref.ref[ssl.SSLObject]] = []

    async def watch(b: EmbeddedBroker) -> None:
        front = b._tls.front if b._tls is not None else None
        assert front is not None
        assert front.sni_callback is not None
        select = front.sni_callback

        def record(sslobj: ssl.SSLObject, name: str, context: ssl.SSLContext) -> None:
            seen.append(weakref.ref(sslobj))
            select(sslobj, name, context)

        front.sni_callback = record

    broker.call(watch)
    handshake(broker.port, pki, None)  # warm up: first-use allocations are not garbage
    gc.collect()
    gc.disable()
    try:
        for creds in (None, pki.foreign, pki.expired) * 3:
            handshake(broker.port, pki, creds)
        assert until_blocking(lambda: sum(stats(broker).refusals.values()) == 10)

        async def settle(_b: EmbeddedBroker) -> None:
            await asyncio.sleep(0.1)  # the transports' connection_lost callbacks run

        broker.call(settle)
        alive = [ref for ref in seen[1:] if ref() is not None]
    finally:
        gc.enable()
    assert len(seen) == 10
    assert alive == []


def test_an_accepted_connection_still_works(
    pki: Pki, broker: BrokerThread, connect: Connect
) -> None:
    """The handshake run by the broker itself accepts a node, which then connects as itself."""
    connect(pki.node_a)
    assert stats(broker).connections["node"] == 1
    assert NODE_A in broker.call(lambda b: _value(b.connected()))


async def _value(value: list[str]) -> list[str]:
    return value


def _tls_from(source: str, port: int, pki: Pki, creds: Creds, timeout: float) -> bool:
    """Whether a TLS handshake from ``source`` with ``creds`` completes within ``timeout``."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(creds.cert, creds.key)
    with socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0)) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return True
        except TimeoutError:
            return False


def test_handshakes_from_one_address_wait_their_turn_while_others_pass(
    pki: Pki, start_broker: Callable[..., BrokerThread]
) -> None:
    """With two handshakes of 127.0.0.2 in progress (silent clients), its third waits; a node
    from 127.0.0.1 connects meanwhile; once a slot frees, the waiting handshake completes."""
    broker = start_broker(handshakes_per_source=2)
    stalled = [
        socket.create_connection((HOST, broker.port), source_address=("127.0.0.2", 0))
        for _ in range(2)
    ]
    done: list[bool] = []
    waiting = threading.Thread(
        target=lambda: done.append(_tls_from("127.0.0.2", broker.port, pki, pki.node_b, 4.0))
    )
    try:
        time.sleep(0.2)  # accepted: both hold a slot, waiting for a ClientHello
        waiting.start()
        time.sleep(0.5)
        assert done == []  # its ClientHello waits in the socket for a slot
        assert _tls_from(HOST, broker.port, pki, pki.node_a, timeout=2.0)
        stalled.pop().close()
        waiting.join(6)
        assert done == [True]
    finally:
        for sock in stalled:
            sock.close()
        waiting.join(6)

"""Helpers for the broker tests: a PKI on disk and the broker in a thread.

The clients are in `tests.broker.clients` (paho, Mosquitto) and `tests.broker.rawmqtt`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from broker import BrokerSettings, ConnectionEvent, EmbeddedBroker, TLSFiles
from certs import (
    CertificateAuthority,
    Identity,
    IssuedCertificate,
    build_csr,
    generate_private_key,
    write_private_file,
    write_public_file,
)
from certs.keys import private_key_pem
from tests.support.loop_thread import LoopThread

T = TypeVar("T")

HOST = "127.0.0.1"
WAIT = 3.0  # the longest any single expected thing may take
QUIET = 0.4  # how long we listen to conclude that nothing arrives
NODE_A = "default.node-a"
NODE_B = "default.node-b"


# -- PKI ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Creds:
    """A client certificate (with its chain) and key on disk, and the client id it goes with."""

    client_id: str
    cert: Path
    key: Path
    serial: int


@dataclass(slots=True)
class Pki:
    """A CA, the broker's TLS files and the client certificates the tests use."""

    root: Path
    ca: CertificateAuthority
    files: TLSFiles
    node_a: Creds
    node_b: Creds
    operator: Creds
    service: Creds
    foreign: Creds
    expired: Creds
    _count: list[int] = field(default_factory=lambda: [0])

    @property
    def ca_file(self) -> Path:
        return self.ca.ca_path

    def new_node(self, name: str | None = None) -> Creds:
        """A fresh node certificate (for tests that revoke it)."""
        self._count[0] += 1
        name = name or f"fresh-{self._count[0]}"
        return issue_node(self.ca, self.root / "clients", "default", name)

    def server_files(self, directory: Path) -> TLSFiles:
        """A private copy of the server's TLS files (for tests that rotate its certificate)."""
        directory.mkdir(parents=True, exist_ok=True)
        write_server_cert(self.ca, directory)
        return TLSFiles(
            ca=self.ca.ca_path,
            cert=directory / "server.crt",
            key=directory / "server.key",
            crl=self.ca.crl_path,
        )


def _write_creds(directory: Path, client_id: str, issued: IssuedCertificate, key: bytes) -> Creds:
    directory.mkdir(parents=True, exist_ok=True)
    stem = client_id.replace(":", "_")
    cert, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    write_public_file(cert, issued.chain_pem)
    write_private_file(key_path, key)
    return Creds(client_id, cert, key_path, issued.certificate.serial_number)


def issue_node(ca: CertificateAuthority, directory: Path, namespace: str, name: str) -> Creds:
    """A node certificate issued from a CSR, as a node would get it."""
    key = generate_private_key()
    identity = Identity.node(namespace, name)
    issued = ca.issue_from_csr(build_csr(key), identity)
    return _write_creds(directory, identity.common_name, issued, private_key_pem(key))


def _local(directory: Path, issued: IssuedCertificate, client_id: str) -> Creds:
    assert issued.private_key_pem is not None
    return _write_creds(directory, client_id, issued, issued.private_key_pem)


def write_server_cert(ca: CertificateAuthority, directory: Path) -> int:
    """Write server.crt (chain) and server.key into `directory`; return the certificate's serial."""
    issued = ca.issue_server(
        "pybaetyl server",
        dns_names=["localhost"],
        ip_addresses=[ipaddress.ip_address(HOST)],
    )
    assert issued.private_key_pem is not None
    write_private_file(directory / "server.key", issued.private_key_pem)
    write_public_file(directory / "server.crt", issued.chain_pem)
    return issued.certificate.serial_number


def build_pki(root: Path) -> Pki:
    """A CA with a server certificate and one client certificate of every kind the tests need."""
    ca = CertificateAuthority.init(root / "ca")
    server = root / "server"
    server.mkdir()
    write_server_cert(ca, server)
    clients = root / "clients"
    foreign_ca = CertificateAuthority.init(root / "foreign-ca")
    # Issued ten days ago for one day; a CRL signed then would be stale, but issuing does not
    # re-sign it.
    past = datetime.now(UTC) - timedelta(days=10)
    past_ca = CertificateAuthority(root / "ca", now=lambda: past)
    expired_key = generate_private_key()
    expired = past_ca.issue_from_csr(
        build_csr(expired_key), Identity.node("default", "node-old"), validity_days=1
    )
    return Pki(
        root=root,
        ca=ca,
        files=TLSFiles(
            ca=ca.ca_path, cert=server / "server.crt", key=server / "server.key", crl=ca.crl_path
        ),
        node_a=issue_node(ca, clients, "default", "node-a"),
        node_b=issue_node(ca, clients, "default", "node-b"),
        operator=_local(clients, ca.issue_operator("dbg"), "operator:dbg"),
        service=_local(clients, ca.issue_service("shadow"), "service:shadow"),
        foreign=issue_node(foreign_ca, root / "foreign", "default", "node-a"),
        expired=_write_creds(clients, "default.node-old", expired, private_key_pem(expired_key)),
    )


def broker_settings(**overrides: object) -> BrokerSettings:
    """Test settings: loopback, ephemeral ports, short timeouts, a fast CRL poll."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "plain_port": 0,
        "connect_timeout": 2.0,
        "crl_poll_interval": 0.1,
    }
    values.update(overrides)
    return BrokerSettings(**values)  # type: ignore[arg-type]


# -- the broker in a thread ----------------------------------------------------------------------


class BrokerThread(LoopThread):
    """An EmbeddedBroker serving from its own event loop thread, so tests stay synchronous."""

    name = "broker"

    def __init__(
        self, settings: BrokerSettings, files: TLSFiles, *, sessions: Path | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.files = files
        self.sessions = sessions  # the file persistent sessions are saved to and restored from
        self._events: list[ConnectionEvent] = []
        self._changed = threading.Condition()
        self._broker: EmbeddedBroker | None = None

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        async with EmbeddedBroker(self.settings, self.files, sessions=self.sessions) as broker:
            self._broker = broker
            broker.add_listener(self._on_event)
            yield
        self._broker = None

    def _on_event(self, event: ConnectionEvent) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    @property
    def broker(self) -> EmbeddedBroker:
        assert self._broker is not None
        return self._broker

    @property
    def ports(self) -> dict[str, int]:
        return self.call(lambda b: _value(b.ports))

    @property
    def port(self) -> int:
        return self.ports["mqtts"]

    def call(self, fn: Callable[[EmbeddedBroker], Awaitable[T]], timeout: float = WAIT) -> T:
        """Run ``fn(broker)`` on the broker's loop and return its result."""
        return self.run(lambda: fn(self.broker), timeout)

    @property
    def events(self) -> list[ConnectionEvent]:
        with self._changed:
            return list(self._events)

    def wait_event(
        self, predicate: Callable[[ConnectionEvent], bool], timeout: float = WAIT
    ) -> ConnectionEvent:
        """The first event (past or future) for which `predicate` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout} s: {self._events}")
                self._changed.wait(left)


async def _value(value: T) -> T:
    return value


# -- small things --------------------------------------------------------------------------------


def peer_serial(sock: ssl.SSLSocket | Any) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der).serial_number


def node_topic(node_id: str, suffix: str) -> str:
    """``$baetyl/node/<node id>/<suffix>``."""
    return f"$baetyl/node/{node_id}/{suffix}"

"""``/metrics``: what the cloud exposes moves with its traffic, and docs/metrics.md lists it all."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certs import CertificateAuthority
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds, issue_node
from tests.support.polling import until_blocking
from tests.support.up import BAETYL, start_up_ports

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
NODE = "default.m1"
PREFIX = f"$baetyl/node/{NODE}/"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api_port: int) -> tuple[str, str]:
    """The body and Content-Type of ``GET /metrics``, without any token."""
    url = f"http://127.0.0.1:{api_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback http
        return response.read().decode(), response.headers["Content-Type"]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def exposed(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Each exposed family by the name it is documented under: (type, label names)."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {
            label
            for sample in family.samples
            for label in sample.labels
            if label not in ("le", "quantile")
        }
        out[name] = (family.type, frozenset(labels))
    return out


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """The rows of docs/metrics.md's table: name -> (type, label names)."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|([^|]*)\|", DOC.read_text(), re.MULTILINE)
    return {name: (kind, frozenset(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def handshake(port: int, ca: Path, creds: Creds | None) -> None:
    """A TLS handshake with ``creds`` (or no client certificate), waiting for the verdict."""
    context = ssl.create_default_context(cafile=str(ca))
    if creds is not None:
        context.load_cert_chain(creds.cert, creds.key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.settimeout(1.0)
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass  # refused: what the test makes happen


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[dict[str, int], CertificateAuthority]]:
    """``baetyl up`` from a fresh directory (its CA made first); its ports and CA."""
    init = subprocess.run(
        [BAETYL, "certs", "init"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert init.returncode == 0, init.stderr
    ca = CertificateAuthority.load(tmp_path / "baetyl-data" / "ca")
    proc, ports = start_up_ports(tmp_path, "--set", "broker.crl_poll_interval=0.1")
    try:
        yield ports, ca
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_metrics_move_with_nodes_reports_and_refused_handshakes(
    tmp_path: Path, up: tuple[dict[str, int], CertificateAuthority]
) -> None:
    """A node connects and reports, three clients are refused (no certificate, another CA, a
    revoked certificate): the scrape shows the node, the messages, the shadow's request and its
    latency, and each refusal under its reason."""
    ports, ca = up
    port = ports["mqtts"]
    before = samples(scrape(ports["api"])[0])
    assert value(before, "baetyl_broker_connections", role="node") == 0
    assert value(before, "baetyl_bus_connected") == 1

    creds = issue_node(ca, tmp_path / "clients", "default", "m1")
    node = MqttClient(port, NODE, ca=ca.ca_path, creds=creds)
    try:
        node.connect()
        assert node.subscribe(PREFIX + "report/accepted", 1) == [1]
        node.publish(
            PREFIX + "report", json.dumps({"clientToken": "1", "reported": {"a": 1}}).encode()
        )
        assert json.loads(node.receive().payload)["clientToken"] == "1"

        handshake(port, ca.ca_path, None)
        foreign = CertificateAuthority.init(tmp_path / "foreign-ca")
        handshake(port, ca.ca_path, issue_node(foreign, tmp_path / "foreign", "default", "m1"))
        revoked = issue_node(ca, tmp_path / "clients", "default", "m2")
        ca.revoke(revoked.serial)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the broker reloads the CRL within a poll or two
            handshake(port, ca.ca_path, revoked)
            now = samples(scrape(ports["api"])[0])
            if value(now, "baetyl_broker_refused_connections_total", reason="revoked") > 0:
                break

        # The connection gauges are walked at most once a second (a scrape inside that second
        # reads the last walk, made before the node connected if all this was quick).
        def node_counted() -> Samples | None:
            found = samples(scrape(ports["api"])[0])
            return found if value(found, "baetyl_broker_connections", role="node") == 1 else None

        after = until_blocking(node_counted)
        assert after
    finally:
        node.close()
    refused = "baetyl_broker_refused_connections_total"
    assert value(after, refused, reason="no-certificate") == 1
    assert value(after, refused, reason="unknown-ca") == 1
    assert value(after, refused, reason="revoked") >= 1
    assert value(after, "baetyl_broker_messages_received_total") >= 1  # the report
    assert value(after, "baetyl_broker_messages_sent_total") >= 2  # to the shadow, the answer
    assert value(after, "baetyl_shadow_requests_total", kind="report") == 1
    assert value(after, "baetyl_shadow_request_duration_seconds_count") >= 1
    assert value(after, "baetyl_shadow_cached") >= 1
    assert value(after, "process_resident_memory_bytes") > 0

    def disconnected() -> bool:
        found = samples(scrape(ports["api"])[0])
        return value(found, "baetyl_broker_disconnects_total", reason="client-disconnect") == 1

    assert until_blocking(disconnected)


def test_the_doc_lists_exactly_the_exposed_metrics(
    up: tuple[dict[str, int], CertificateAuthority],
) -> None:
    """docs/metrics.md's table names every exposed metric, with its type and labels, and no
    other; the endpoint answers without a token, in Prometheus' text format."""
    ports, _ca = up
    text, content_type = scrape(ports["api"])
    assert content_type.startswith("text/plain; version=")
    assert exposed(text) == documented()

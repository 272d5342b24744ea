"""The node broker's server certificate, asked of the real cloud's activation endpoint.

``POST /v1/broker-certificate`` is built by the cloud's side of the data plane (branch dp-cloud);
against a cloud without it the test that needs it is skipped, saying so, and runs once both
sides are merged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.dataplane.brokercert import (
    BrokerCertificate,
    default_hosts,
    finish_interrupted_swap,
    request_certificate,
)
from edge.dataplane.nodebroker import NodeBrokerFiles
from edge.errors import BrokerCertificateError

HOSTS = ["gw-1.local", "192.0.2.10", "localhost", "127.0.0.1"]


def test_default_hosts_name_this_machine_and_loopback() -> None:
    hosts = default_hosts()
    assert hosts[-2:] == ["localhost", "127.0.0.1"]
    assert socket.gethostname() in hosts
    assert len(hosts) == len(set(hosts)) <= 16
    for host in hosts[1:-2]:
        assert not ipaddress.ip_address(host).is_loopback


async def _request(state: Path, files: NodeBrokerFiles, hosts: list[str]) -> None:
    try:  # in a thread: the cloud runs on this test's event loop
        await asyncio.to_thread(request_certificate, state, files, hosts)
    except BrokerCertificateError as exc:
        if "HTTP 404" in str(exc):
            pytest.skip("this cloud has no POST /v1/broker-certificate yet (branch dp-cloud)")
        raise


async def test_the_cloud_signs_the_brokers_key_for_its_hosts(agent_dir: Path) -> None:
    files = NodeBrokerFiles(agent_dir)
    await _request(agent_dir, files, HOSTS)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600  # made here, never sent
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    device_ca = x509.load_pem_x509_certificate(files.device_ca.read_bytes())
    certificate.verify_directly_issued_by(device_ca)
    cloud_ca = x509.load_pem_x509_certificate((agent_dir / "ca.crt").read_bytes())
    assert device_ca.subject != cloud_ca.subject  # never the CA the agents trust for the cloud
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"gw-1.local", "localhost"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {
        "192.0.2.10",
        "127.0.0.1",
    }
    kept = BrokerCertificate(agent_dir, files, HOSTS)
    assert kept.present
    assert not kept.due()
    assert BrokerCertificate(agent_dir, files, ["other.local"]).due()  # other hosts: ask again
    # A second request replaces key and certificate together.
    old_key = files.key.read_bytes()
    await _request(agent_dir, files, HOSTS)
    assert files.key.read_bytes() != old_key
    assert not list(files.root.glob("*.new"))


async def test_an_unreachable_cloud_leaves_the_cause_and_no_files(
    agent_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "copy"
    shutil.copytree(agent_dir, state)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    info = json.loads((state / "node.json").read_text())
    info["url"] = f"https://127.0.0.1:{port}"
    (state / "node.json").write_text(json.dumps(info))
    files = NodeBrokerFiles(state)
    certificate = BrokerCertificate(state, files, HOSTS, backoff=(60.0, 60.0), timeout=2.0)
    assert certificate.due()
    assert await certificate.ensure() is False
    assert certificate.error is not None
    assert f"127.0.0.1:{port}" in certificate.error
    assert not certificate.present
    assert not files.root.exists() or not list(files.root.glob("server.*"))


def test_a_swap_cut_between_its_renames_is_finished(tmp_path: Path) -> None:
    files = NodeBrokerFiles(tmp_path)
    files.root.mkdir()
    files.key.write_text("old key")
    files.cert.write_text("old cert")
    # The key was renamed, the certificate was not: the new certificate goes in.
    files.key.write_text("new key")
    (files.root / "server.crt.new").write_text("new cert")
    finish_interrupted_swap(files)
    assert (files.key.read_text(), files.cert.read_text()) == ("new key", "new cert")
    # Neither renamed: both go in, the key first.
    (files.root / "server.key.new").write_text("newer key")
    (files.root / "server.crt.new").write_text("newer cert")
    finish_interrupted_swap(files)
    assert (files.key.read_text(), files.cert.read_text()) == ("newer key", "newer cert")
    # A key whose certificate never came is dropped; the pair in place stays.
    (files.root / "server.key.new").write_text("orphan")
    finish_interrupted_swap(files)
    assert files.key.read_text() == "newer key"
    assert not list(files.root.glob("*.new"))

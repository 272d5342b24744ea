"""``baetyl edge activate``: the install command, run for real against the whole cloud.

The command runs in a thread (``asyncio.to_thread``) while the test's loop serves the cloud; the
stored certificate is then used by a paho client to connect to the cloud's broker.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from edge import ActivationError, FingerprintSource, read_fingerprint
from edge.cli import FINGERPRINT_SOURCES
from management.batches import batch_node_name
from tests.support.agent import connects, install_command, snapshot
from tests.support.cli import Cli
from tests.support.cloud import Api, RunningCloud


def option(argv: list[str], name: str) -> str:
    """The value of ``name`` in ``argv``."""
    return argv[argv.index(name) + 1]


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """``argv`` with the value of ``name`` replaced."""
    changed = list(argv)
    changed[changed.index(name) + 1] = value
    return changed


async def test_install_command_activates_the_node(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """The install command stores a key (0600), the certificate, the CA and node.json that work."""
    argv = await install_command(api, "gw-1")
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        result = await run(*argv, "--state-dir", str(state))
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert "activated node default.gw-1" in result.out
    assert option(argv, "--token") not in result.out + result.err
    assert sorted(path.name for path in state.iterdir()) == [
        "ca.crt", "node.crt", "node.csr", "node.json", "node.key"
    ]  # fmt: skip
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "node.key").stat().st_mode) == 0o600
    for name in ("ca.crt", "node.crt", "node.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o644, name

    certificate = x509.load_pem_x509_certificate((state / "node.crt").read_bytes())
    [common_name] = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == "default.gw-1"
    key = serialization.load_pem_private_key((state / "node.key").read_bytes(), password=None)
    assert certificate.public_key() == key.public_key()
    ca = x509.load_pem_x509_certificate((state / "ca.crt").read_bytes())
    assert ca.fingerprint(hashes.SHA256()).hex() == option(argv, "--ca-sha256")
    node = json.loads((state / "node.json").read_text())
    assert node.pop("activatedAt").endswith("Z")
    assert re.fullmatch("[0-9a-f]{16}", node.pop("activationId"))
    assert node == {
        "nodeId": "default.gw-1",
        "broker": {"host": "localhost", "port": cloud.mqtt_port},
        "url": option(argv, "--url"),
    }
    assert await connects(cloud, state, "default.gw-1")


async def test_wrong_ca_fingerprint_is_refused_before_the_token_is_sent(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """A CA whose SHA-256 is not --ca-sha256 stops the command; nothing is stored or used up."""
    argv = await install_command(api, "gw-1")
    right = option(argv, "--ca-sha256")
    wrong = ("0" if right[0] != "0" else "1") + right[1:]
    state = tmp_path / "state"
    result = await run(*with_option(argv, "--ca-sha256", wrong), "--state-dir", str(state))
    assert result.code == 1
    assert result.err.startswith("error: The CA of ")
    assert right in result.err
    assert wrong in result.err
    assert option(argv, "--token") not in result.err
    assert not state.exists()
    # The token was never sent, so it still works.
    result = await run(*argv, "--state-dir", str(state))
    assert result.code == 0, result.err


async def test_replayed_token_is_refused_and_changes_nothing(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """Re-running with a used token prints the cloud's 401 message and leaves the files alone."""
    argv = await install_command(api, "gw-1")
    state = tmp_path / "state"
    assert (await run(*argv, "--state-dir", str(state))).code == 0
    before = snapshot(state)
    result = await run(*argv, "--state-dir", str(state))
    assert result.code == 1
    assert result.err.startswith("error: This activation token was used already;")
    assert option(argv, "--token") not in result.err
    assert snapshot(state) == before
    assert await connects(cloud, state, "default.gw-1")


async def test_new_token_replaces_the_certificate_and_keeps_the_key(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """A second install command gives a new certificate for the same key; both runs say so."""
    state = tmp_path / "state"
    first = await run(*await install_command(api, "gw-1"), "--state-dir", str(state))
    assert first.code == 0, first.err
    assert "made now" in first.out
    before = snapshot(state)
    again = await run(*await install_command(api, "gw-1", create=False), "--state-dir", str(state))
    assert again.code == 0, again.err
    assert "kept" in again.out
    after = snapshot(state)
    assert after["node.key"] == before["node.key"]
    assert after["node.csr"] == before["node.csr"]
    assert after["node.crt"] != before["node.crt"]
    assert after["ca.crt"] == before["ca.crt"]
    assert await connects(cloud, state, "default.gw-1")


async def test_key_from_keygen_is_used(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """A key made earlier by 'baetyl edge keygen' is the one the certificate is for."""
    state = tmp_path / "state"
    assert (await run("edge", "keygen", "--state-dir", str(state))).code == 0
    key = (state / "node.key").read_bytes()
    result = await run(*await install_command(api, "gw-1"), "--state-dir", str(state))
    assert result.code == 0, result.err
    assert (state / "node.key").read_bytes() == key
    certificate = x509.load_pem_x509_certificate((state / "node.crt").read_bytes())
    private = serialization.load_pem_private_key(key, password=None)
    assert certificate.public_key() == private.public_key()


async def test_batch_device_activates_with_its_fingerprint(
    cloud: RunningCloud, api: Api, run: Cli, tmp_path: Path
) -> None:
    """With a batch's secret and --fingerprint the device becomes the batch's node and connects."""
    status, batch = await api.call(
        "POST", "/batches", {"name": "paris", "fingerprintKind": "serialNumber", "quota": 2}
    )
    assert status == 201, batch
    argv = await install_command(api, "unused")
    common = [
        "edge", "activate",
        "--url", option(argv, "--url"),
        "--ca-sha256", option(argv, "--ca-sha256"),
        "--namespace", "default",
        "--batch", "paris",
    ]  # fmt: skip
    state = tmp_path / "state"
    wrong = await run(
        *common, "--secret", "nope", "--fingerprint", "SN-1", "--state-dir", str(state)
    )
    assert wrong.code == 1
    assert wrong.err.startswith("error: ")
    assert "secret" in wrong.err
    assert not (state / "node.crt").exists()

    secret = batch["secret"]
    result = await run(
        *common, "--secret", secret, "--fingerprint", "SN-1", "--state-dir", str(state)
    )
    assert result.code == 0, result.err
    assert secret not in result.out + result.err
    node_id = f"default.{batch_node_name('paris', 'SN-1')}"
    assert f"activated node {node_id}" in result.out
    assert json.loads((state / "node.json").read_text())["nodeId"] == node_id
    assert await connects(cloud, state, node_id)

    hostname = tmp_path / "by-hostname"
    result = await run(
        *common, "--secret", secret, "--fingerprint-from", "hostname", "--state-dir", str(hostname)
    )
    assert result.code == 0, result.err
    assert f"default.{batch_node_name('paris', socket.gethostname())}" in result.out


async def test_batch_needs_its_options(run: Cli, tmp_path: Path) -> None:
    """--batch without a secret or fingerprint, or --token with batch options, is refused."""
    base = ["edge", "activate", "--url", "https://localhost:9003", "--ca-sha256", "ab" * 32]
    result = await run(*base, "--batch", "b", "--namespace", "default")
    assert result.code == 1
    assert "--batch needs --secret, --fingerprint or --fingerprint-from as well." in result.err
    result = await run(*base, "--token", "t", "--fingerprint", "x")
    assert result.code == 1
    assert "--fingerprint go with --batch, not --token" in result.err


async def test_server_down_says_what_to_check(run: Cli, tmp_path: Path) -> None:
    """Nothing listening at --url: a refused connection with what to check, nothing stored."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "state"
    result = await run(
        "edge", "activate", "--url", f"https://127.0.0.1:{port}", "--ca-sha256", "ab" * 32,
        "--token", "secret-token", "--state-dir", str(state),
    )  # fmt: skip
    assert result.code == 1
    assert result.err == (
        f"error: Cannot connect to https://127.0.0.1:{port}: connection refused. Check --url "
        "(copy it from the install command) and that the cloud is running and reachable from "
        "this node.\n"
    )
    assert not state.exists()


async def test_plain_http_endpoint_fails_the_tls_handshake(
    cloud: RunningCloud, run: Cli, tmp_path: Path
) -> None:
    """An --url that is not TLS (the plain API port) fails with a message naming the endpoint."""
    url = cloud.api_url.replace("http://", "https://")
    result = await run(
        "edge", "activate", "--url", url, "--ca-sha256", "ab" * 32, "--token", "secret-token",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith(f"error: The TLS handshake with {url} failed (")
    assert "secret-token" not in result.err


@pytest.mark.parametrize(
    ("url", "sha256"),
    [
        ("http://localhost:9003", "ab" * 32),
        ("https://localhost:9003/v1", "ab" * 32),
        ("https://localhost:9003", "ab" * 31),
        ("https://localhost:9003", "xy" * 32),
    ],
)
async def test_malformed_url_or_fingerprint_is_refused(
    run: Cli, tmp_path: Path, url: str, sha256: str
) -> None:
    """A non-HTTPS or non-root --url, or a --ca-sha256 not of 64 hex digits, stops at once."""
    state = tmp_path / "state"
    result = await run(
        "edge", "activate", "--url", url, "--ca-sha256", sha256, "--token", "t",
        "--state-dir", str(state),
    )  # fmt: skip
    assert result.code == 1
    assert "--url" in result.err or "--ca-sha256 must be" in result.err
    assert not state.exists()


def test_fingerprint_sources(tmp_path: Path) -> None:
    """machineId and serialNumber come from their files, hostname from the system."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "machine-id").write_text("0123abcd\n")
    dmi = tmp_path / "sys" / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_serial").write_text("SN-42\n")
    assert read_fingerprint(FingerprintSource.MACHINE_ID, root=tmp_path) == "0123abcd"
    assert read_fingerprint(FingerprintSource.SERIAL_NUMBER, root=tmp_path) == "SN-42"
    assert read_fingerprint(FingerprintSource.HOSTNAME, root=tmp_path) == socket.gethostname()


def test_unreadable_or_placeholder_fingerprint_is_refused(tmp_path: Path) -> None:
    """A missing machine id or a placeholder serial number is an error saying what to do."""
    with pytest.raises(ActivationError, match=r"machine-id: No such file.*--fingerprint"):
        read_fingerprint(FingerprintSource.MACHINE_ID, root=tmp_path)
    dmi = tmp_path / "sys" / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_serial").write_text("To Be Filled By O.E.M.\n")
    with pytest.raises(ActivationError, match="placeholder"):
        read_fingerprint(FingerprintSource.SERIAL_NUMBER, root=tmp_path)


def test_parser_fingerprint_sources_match_the_activation() -> None:
    """The sources spelled out for the parser (which loads no cryptography) are activation's."""
    assert list(FINGERPRINT_SOURCES) == [source.value for source in FingerprintSource]

"""The CA's way from the hook Job to a running cloud, with the chart's own scripts.

The hook Job's Python script and the seed init container's shell script are taken from the
rendered manifests and run here as they run in the pod: with the pod's environment, the pod's
paths replaced by temporary directories, and the Kubernetes API replaced by a file
(`tests.deploy.kube_stub`). The cloud must then load the Secret's CA unchanged, and `baetyl up`
must run on the seeded data directory with the environment and ConfigMap the chart renders.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certs import CertificateAuthority
from management.bootstrap import ensure_pki
from management.config import load_settings
from tests.deploy.charts import (
    CLOUD,
    EDGE,
    NAMESPACE,
    ROOT,
    Manifest,
    Renderer,
    env_of,
    one,
    pod_spec,
)
from tests.support.up import BAETYL, EPHEMERAL

VENV_BIN = Path(sys.executable).parent
# A clean environment: the scripts must not depend on (or be confused by) the test runner's.
BASE_ENV = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "LANG": "C.UTF-8"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _values(container: Mapping[str, Any], **replace: str) -> dict[str, str]:
    """A container's plain env values, some replaced (a path of the pod by a local one)."""
    env = {name: item["value"] for name, item in env_of(container).items() if "value" in item}
    for name, value in replace.items():
        assert name in env, f"{container['name']} has no {name}"
        env[name] = value
    return env


def run_hook(
    manifests: list[Manifest], out: Path, outcome: str
) -> subprocess.CompletedProcess[str]:
    """Run the CA hook Job's script; the Secret it creates is written to ``out``."""
    container = pod_spec(one(manifests, "Job"))["containers"][0]
    command = container["command"]
    assert command[:2] == ["python3", "-c"]
    env = {**BASE_ENV, **_values(container), "POD_NAMESPACE": NAMESPACE}
    return subprocess.run(
        [sys.executable, "-m", "tests.deploy.kube_stub", str(out), outcome],
        input=command[2],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def secret_volume(secret: Mapping[str, Any], directory: Path) -> Path:
    """Write a Secret's data as its volume presents it (mode 0440, as the chart asks)."""
    directory.mkdir(parents=True)
    for key, value in secret["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
        (directory / key).chmod(0o440)
    return directory


def run_seed(
    manifests: list[Manifest], data: Path, ca_source: Path
) -> subprocess.CompletedProcess[str]:
    """Run the Deployment's seed init container's script on local directories."""
    spec = pod_spec(one(manifests, "Deployment"))
    (seed,) = spec["initContainers"]
    assert seed["command"][:2] == ["sh", "-c"]
    mounts = {m["name"]: m["mountPath"] for m in seed["volumeMounts"]}
    env = _values(seed)
    # The script finds the data volume and the Secret where the pod mounts them.
    assert env["BAETYL_DATA_DIR"] == mounts["data"]
    assert env["CA_SOURCE_DIR"] == mounts["ca"]
    env = {**BASE_ENV, **_values(seed, BAETYL_DATA_DIR=str(data), CA_SOURCE_DIR=str(ca_source))}
    return subprocess.run(
        ["sh", "-c", seed["command"][2]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def manifests(renderer: Renderer) -> list[Manifest]:
    """The cloud chart with its defaults: the hook Job makes the CA."""
    return renderer.manifests(CLOUD)


@pytest.fixture(scope="module")
def secret(manifests: list[Manifest], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The CA Secret the hook Job creates (once for the module: each test copies it)."""
    out = tmp_path_factory.mktemp("hook") / "created.json"
    result = run_hook(manifests, out, "created")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Created the CA Secret demo-pybaetyl-ca."
    created: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert created["namespace"] == NAMESPACE
    secret: dict[str, Any] = created["secret"]
    return secret


@pytest.fixture
def seeded(manifests: list[Manifest], secret: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    """A data volume seeded from the Secret by the init container: (data dir, Secret volume)."""
    source = secret_volume(secret, tmp_path / "secret")
    data = tmp_path / "data"
    data.mkdir()
    result = run_seed(manifests, data, source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"Seeded the CA in {data / 'ca'} from the CA Secret."
    return data, source


def test_hook_creates_the_ca_secret(secret: dict[str, Any]) -> None:
    """The Secret: named as the Deployment mounts it, ca.crt and ca.key of a matching CA pair."""
    assert secret["metadata"]["name"] == "demo-pybaetyl-ca"
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert secret["type"] == "Opaque"
    assert set(secret["data"]) == {"ca.crt", "ca.key"}
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    key = serialization.load_pem_private_key(base64.b64decode(secret["data"]["ca.key"]), None)
    assert cert.subject.rfc4514_string() == "CN=pybaetyl CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()


def test_hook_keeps_an_existing_secret(manifests: list[Manifest], tmp_path: Path) -> None:
    """A Secret already there (a reinstall, an upgrade) is kept and the Job succeeds."""
    out = tmp_path / "never-written.json"
    result = run_hook(manifests, out, "exists")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "The CA Secret demo-pybaetyl-ca exists already; it is kept."
    assert not out.exists()


def test_seeded_data_dir_is_what_the_ca_expects(seeded: tuple[Path, Path]) -> None:
    """ca/ is 0700 with ca.key 0600, ca.crt 0644 and a journal; the cloud loads it as is."""
    data, source = seeded
    ca_dir = data / "ca"
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "ca.crt") == 0o644
    assert (ca_dir / "index.jsonl").is_file()
    assert not (ca_dir / "crl.pem").exists(), "the throwaway CA's CRL is dropped"
    assert sorted(p.name for p in data.iterdir()) == ["ca"], "no seed directory is left behind"

    ca = CertificateAuthority.load(ca_dir)
    assert ca.certificate_pem == (source / "ca.crt").read_bytes()
    # The CRL is signed again with the Secret's key when the CA loads.
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]

    # What `baetyl up` does first: the CA as the server's issuer, the journal appended to.
    settings = load_settings(data_dir=data, environ={})
    ca, files = ensure_pki(settings)
    server = x509.load_pem_x509_certificate(files.cert.read_bytes())
    server.verify_directly_issued_by(ca.certificate)
    assert [r.serial for r in ca.records()] == [server.serial_number]


def test_seed_keeps_the_ca_already_there(
    manifests: list[Manifest], seeded: tuple[Path, Path], tmp_path: Path
) -> None:
    """A restart seeds nothing; a Secret that differs from the CA in use only warns."""
    data, source = seeded
    before = {p.name: p.read_bytes() for p in (data / "ca").iterdir()}
    result = run_seed(manifests, data, source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"The CA in {data / 'ca'} is there already; it is kept."
    assert result.stderr == ""

    other = tmp_path / "other-ca"
    subprocess.run(
        [BAETYL, "--data-dir", str(other), "certs", "init"],
        env=BASE_ENV,
        check=True,
        capture_output=True,
    )
    other_source = tmp_path / "other-secret"
    other_source.mkdir()
    for name in ("ca.crt", "ca.key"):
        (other_source / name).write_bytes((other / "ca" / name).read_bytes())
    result = run_seed(manifests, data, other_source)
    assert result.returncode == 0, result.stderr
    assert "differs from the CA Secret; the CA in the data directory is used" in result.stderr
    assert {p.name: p.read_bytes() for p in (data / "ca").iterdir()} == before


def test_seed_fills_a_ca_dir_that_holds_no_ca(
    manifests: list[Manifest], secret: dict[str, Any], tmp_path: Path
) -> None:
    """A ca/ directory left without a CA (only its lock file) is filled, not refused."""
    source = secret_volume(secret, tmp_path / "secret")
    data = tmp_path / "data"
    (data / "ca").mkdir(parents=True, mode=0o755)
    (data / "ca" / ".lock").touch()
    result = run_seed(manifests, data, source)
    assert result.returncode == 0, result.stderr
    assert _mode(data / "ca") == 0o700
    ca = CertificateAuthority.load(data / "ca")
    assert ca.certificate_pem == (source / "ca.crt").read_bytes()


def _start_cloud(
    env: dict[str, str], cwd: Path, stderr: Path
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`baetyl up` with the pod's environment, on loopback and ephemeral ports; its ports."""
    with stderr.open("w") as errors:
        proc = subprocess.Popen(
            [BAETYL, *EPHEMERAL, "--set", "api.host=127.0.0.1", "up"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    assert proc.stdout is not None
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("Press Ctrl-C"):
            break
        words = line.split()
        if len(words) == 2 and words[1].startswith("127.0.0.1:"):
            ports[words[0]] = int(words[1].rsplit(":", 1)[1])
    if {"api", "activation", "mqtts"} <= set(ports):
        return proc, ports
    proc.kill()
    proc.communicate(timeout=10)
    raise AssertionError(f"baetyl up did not start:\n{stderr.read_text(encoding='utf-8')}")


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 # a local http URL
        status: int = response.status
        return status


def _baetyl(env: Mapping[str, str], *args: str) -> str:
    result = subprocess.run(
        [BAETYL, *args], env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"baetyl {shlex.join(args)}: {result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_cloud_runs_on_the_seeded_data_dir_and_a_node_activates(
    renderer: Renderer, manifests: list[Manifest], seeded: tuple[Path, Path], tmp_path: Path
) -> None:
    """`baetyl up` with the chart's env and ConfigMap; NOTES' steps; the edge chart activates."""
    data, source = seeded
    config = tmp_path / "baetyl.toml"
    config.write_text(one(manifests, "ConfigMap")["data"]["baetyl.toml"], encoding="utf-8")
    cloud = pod_spec(one(manifests, "Deployment"))["containers"][0]
    env = {
        **BASE_ENV,
        **_values(cloud, BAETYL_DATA_DIR=str(data), BAETYL_CONFIG=str(config)),
    }
    public_host = env["BAETYL_API__PUBLIC_HOST"]
    proc, ports = _start_cloud(env, tmp_path, tmp_path / "cloud.log")
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        # The probes' paths answer on the API port.
        assert _get(f"{api}/healthz") == 200
        assert _get(f"{api}/readyz") == 200
        # Nodes reach the activation endpoint by the public host, under the Secret's CA.
        tls = ssl.create_default_context(cafile=str(source / "ca.crt"))
        with (
            socket.create_connection(("127.0.0.1", ports["activation"]), timeout=10) as raw,
            tls.wrap_socket(raw, server_hostname=public_host) as conn,
        ):
            assert conn.version() in ("TLSv1.2", "TLSv1.3")

        # NOTES steps 2-4: a token made inside the pod, then the API through the port-forward.
        token = _baetyl(env, "tokens", "create", "--name", "admin").strip().splitlines()[-1]
        client_env = {**BASE_ENV, "BAETYL_API_URL": api, "BAETYL_API_TOKEN": token}
        node_file = tmp_path / "node.yaml"
        node_file.write_text("kind: Node\nname: gw-1\nlabels: {site: paris}\n", encoding="utf-8")
        _baetyl(client_env, "node", "create", "-f", str(node_file))
        install = json.loads(_baetyl(client_env, "node", "init", "gw-1", "-o", "json"))
        argv = shlex.split(install["cmd"])
        url = argv[argv.index("--url") + 1]
        ca_sha256 = argv[argv.index("--ca-sha256") + 1]
        assert url == f"https://{public_host}:{ports['activation']}"
        ca_cert = x509.load_pem_x509_certificate((source / "ca.crt").read_bytes())
        assert ca_sha256 == ca_cert.fingerprint(hashes.SHA256()).hex()

        # The edge chart, given that install command, activates the node through its init
        # container (here on loopback: the public host is a cluster name).
        edge_values = {
            "activation": {
                "url": f"https://127.0.0.1:{ports['activation']}",
                "caSha256": ca_sha256,
                "token": install["token"],
            }
        }
        edge = renderer.manifests(EDGE, edge_values)
        state = tmp_path / "edge-state"
        first = _activate(edge, state)
        assert first.returncode == 0, first.stderr
        assert "activated node default.gw-1" in first.stdout
        node = x509.load_pem_x509_certificate((state / "node.crt").read_bytes())
        node.verify_directly_issued_by(ca_cert)
        # A restarted pod does not spend the (single-use) token again.
        again = _activate(edge, state)
        assert again.returncode == 0, again.stderr
        assert "activation skipped" in again.stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def _activate(edge: list[Manifest], state: Path) -> subprocess.CompletedProcess[str]:
    """Run the edge chart's activation init container, its token read from the rendered Secret."""
    (init,) = pod_spec(one(edge, "Deployment"))["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    env = _values(init)
    assert env["STATE_DIR"] == mounts["state"]
    ref = env_of(init)["ACTIVATION_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = one(edge, "Secret", ref["name"])
    token = base64.b64decode(secret["data"][ref["key"]]).decode()
    env = {**BASE_ENV, **_values(init, STATE_DIR=str(state)), "ACTIVATION_TOKEN": token}
    return subprocess.run(
        ["sh", "-c", init["command"][2]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

"""Registries and certificates delivered end to end: the real cloud, a real agent subprocess,
the native engine writing a certificate's files, the kube engine (against the stand-in) making
the image pull secret and the certificate's TLS Secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.agentstate import AgentState
from edge.engines import references
from edge.specbook import SpecBook
from management.store import Kind
from shadow import DesiredFollower
from tests.edge.kube_standin import KubeStandIn
from tests.management.api_samples import key_and_certificate
from tests.support.agent import node_online, written
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until

NS = "baetyl-edge"
PASSWORD = "pull-pw-in-clear"

# Writes the directory of its certificate volume to OUT, then stays up.
APP = (
    "import os, pathlib, time\n"
    "pathlib.Path(os.environ['OUT']).write_text(os.environ['BAETYL_VOLUME_TLS'])\n"
    "while True: time.sleep(1)\n"
)


def certificate(common_name: str) -> dict[str, Any]:
    key, cert = key_and_certificate(common_name, (common_name,))
    _, ca = key_and_certificate("ca.example.com", ())
    return {"name": "plc", "data": {"certificate": cert, "key": key, "ca": ca}}


def registry(password: str) -> dict[str, Any]:
    return {"name": "company", "address": "registry.example.com:5000", "username": "robot",
            "password": password}  # fmt: skip


async def call(api: Api, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    status, answer = await api.call(method, path, body)
    assert status in (200, 201), answer


def expect_files(directory: Path, body: dict[str, Any]) -> None:
    """The certificate volume holds exactly tls.crt, tls.key (0600) and ca.crt."""
    data = body["data"]
    assert {p.name for p in directory.iterdir()} == {"tls.crt", "tls.key", "ca.crt"}
    assert (directory / "tls.crt").read_text() == data["certificate"]
    assert (directory / "tls.key").read_text() == data["key"]
    assert (directory / "ca.crt").read_text() == data["ca"]
    assert (directory / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (directory / "tls.crt").stat().st_mode & 0o777 == 0o644
    assert directory.stat().st_mode & 0o777 == 0o700


async def test_a_native_app_gets_its_certificate_files_and_no_registry(
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    cloud: RunningCloud,
) -> None:
    """The native app finds tls.crt, tls.key (0600) and ca.crt through BAETYL_VOLUME_TLS; an
    updated certificate bumps the app, which restarts with the new files. The registry of a
    native app stored with one before the API refused that never reaches the node: a native node
    has no use for its password."""
    out = tmp_path / "volume-dir.txt"
    first = certificate("plc.example.com")
    await call(api, "POST", "/certificates", first)
    await call(api, "POST", "/registries", registry(PASSWORD))
    app = {
        "name": "web", "type": "native", "selector": "site=x",
        "services": [{"name": "web", "command": [sys.executable, "-c", APP],
                      "env": [{"name": "OUT", "value": str(out)}]}],
        "volumes": [{"name": "tls", "certificate": {"name": "plc"}}],
    }  # fmt: skip
    await call(api, "POST", "/apps", app)
    # As stored before the API refused registries on a native app (the API now answers 400).
    store = cloud.context.store
    stored = await store.get(api.namespace, Kind.APP, "web")
    with_registry = {**stored.body, "registries": [{"name": "company"}]}
    updated = await store.update(replace(stored, body=with_registry), expected_version=1)
    await cloud.context.matcher.after_app_change(api.namespace, stored, updated)
    start_agent()
    await until(lambda: node_online(api), what="the node to be online")
    old_dir = Path(await until(lambda: asyncio.sleep(0, written(out)), what="the app to start"))
    assert old_dir.parent.parent.name == "2"  # <apps>/web/<version>/volumes/tls
    expect_files(old_dir, first)

    renewed = certificate("renewed.example.com")
    out.unlink()
    await call(api, "PUT", "/certificates/plc", renewed)
    new_dir = Path(await until(lambda: asyncio.sleep(0, written(out)), what="the app restarted"))
    assert new_dir.parent.parent.name == "3"
    expect_files(new_dir, renewed)
    assert renewed["data"]["key"] != first["data"]["key"]

    state = (agent_dir / "agent.json").read_text()
    assert PASSWORD not in state
    assert '"registry/' not in state
    assert '"registries"' not in state  # the cloud served the app spec without them


async def test_the_kube_engine_gets_the_pull_secret_and_the_certificate_secret(
    api: Api,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Through the agent's own path: the app's registry becomes a dockerconfigjson Secret named
    in the pod's imagePullSecrets, its certificate a kubernetes.io/tls Secret mounted as a
    volume; a new registry password reaches the pull secret."""
    cert = certificate("plc.example.com")
    await call(api, "POST", "/certificates", cert)
    await call(api, "POST", "/registries", registry(PASSWORD))
    async with KubeStandIn() as standin:
        kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
        agent = start_agent("--engine", "kube", env={"KUBECONFIG": str(kubeconfig)})
        app = {
            "name": "web", "type": "container", "selector": "site=x",
            "services": [{"name": "main", "image": "registry.example.com:5000/ot/web:1",
                          "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls"}]}],
            "volumes": [{"name": "tls", "certificate": {"name": "plc"}}],
            "registries": [{"name": "company"}],
        }  # fmt: skip
        await call(api, "POST", "/apps", app)

        def pull_password() -> str | None:
            secret = standin.stored("secrets", NS).get("web-image-pull")
            if secret is None:
                return None
            assert secret["type"] == "kubernetes.io/dockerconfigjson"
            config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
            password: str = config["auths"]["registry.example.com:5000"]["password"]
            return password

        def deployed(version: str) -> bool:
            deployment = standin.stored("deployments", NS).get("web")
            labels = (deployment or {}).get("metadata", {}).get("labels", {})
            return bool(labels.get("baetyl-app-version") == version)

        await until(lambda: asyncio.sleep(0, deployed("1")), what="the Deployment")
        assert pull_password() == PASSWORD
        pod = standin.stored("deployments", NS)["web"]["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "web-image-pull"}]
        assert {"name": "tls", "secret": {"secretName": "web-cert-plc"}} in pod["volumes"]
        tls = standin.stored("secrets", NS)["web-cert-plc"]
        assert tls["type"] == "kubernetes.io/tls"
        files = {k: base64.b64decode(v).decode() for k, v in tls["data"].items()}
        data = cert["data"]
        assert files == {"tls.crt": data["certificate"], "tls.key": data["key"],
                         "ca.crt": data["ca"]}  # fmt: skip

        await call(api, "PUT", "/registries/company", registry("rotated-pw"))
        await until(lambda: asyncio.sleep(0, deployed("2")), what="the app at version 2")
        await until(lambda: asyncio.sleep(0, pull_password() == "rotated-pw"),
                    what="the new password in the pull secret")  # fmt: skip
        assert agent.poll() is None


def test_only_a_container_apps_registries_are_references() -> None:
    """A native or function app's registries are never fetched; a container app's (the type's
    default) are, beside every mounted config, secret and certificate."""
    volumes = [{"name": "t", "certificate": {"name": "plc", "version": "3"}},
               {"name": "h", "hostPath": {"path": "/x"}}]  # fmt: skip
    registries = [{"name": "company", "version": "2"}]
    container = references({"volumes": volumes, "registries": registries})
    assert [ref.key for ref in container] == ["certificate/plc/3", "registry/company/2"]
    for kind in ("native", "function"):
        spec = {"type": kind, "volumes": volumes, "registries": registries}
        assert [ref.key for ref in references(spec)] == ["certificate/plc/3"]


def test_the_agent_forgets_old_registry_passwords_and_certificate_keys(tmp_path: Path) -> None:
    """After a registry and a certificate change, their old versions leave agent.json; the
    ones the applied app uses stay."""
    state = AgentState(tmp_path / "agent.json", "a1")  # only the spec bookkeeping: no agent

    def app(version: str) -> dict[str, Any]:
        return {"volumes": [{"name": "t", "certificate": {"name": "plc", "version": version}}],
                "registries": [{"name": "company", "version": version}]}  # fmt: skip

    state.specs = SpecBook({
        "app/web/1": app("1"),
        "app/web/2": app("2"),
        "certificate/plc/1": {"data": {"tls.key": "old-key"}},
        "certificate/plc/2": {"data": {"tls.key": "new-key"}},
        "registry/company/1": {"data": {"password": "old-pw"}},
        "registry/company/2": {"data": {"password": "new-pw"}},
    })  # fmt: skip
    state.follower = DesiredFollower(2)
    state.applied = [("web", "2")]
    state.specs.prune([("web", "2")])
    state.save()
    assert set(state.specs.to_json()) == {"app/web/2", "certificate/plc/2", "registry/company/2"}
    saved = (tmp_path / "agent.json").read_text()
    assert "old-key" not in saved
    assert "old-pw" not in saved
    spec, lacking = state.specs.app("web", "2")
    assert lacking == []
    assert spec is not None
    assert spec.certificates == {"plc": {"tls.key": "new-key"}}
    assert spec.registries == {"company": {"password": "new-pw"}}

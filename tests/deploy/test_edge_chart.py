"""What the edge agent chart renders, and what it refuses."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.charts import (
    EDGE,
    EDGE_VALUES,
    Manifest,
    Renderer,
    containers,
    env_of,
    find,
    one,
    pod_spec,
)

WRITE = ["get", "list", "create", "update", "delete"]


@pytest.fixture
def manifests(renderer: Renderer) -> list[Manifest]:
    """The edge chart with an install command's values, released in namespace baetyl."""
    return renderer.manifests(EDGE, EDGE_VALUES)


def test_agent_runs_once_with_its_state_on_a_claim(manifests: list[Manifest]) -> None:
    """One agent per node identity, replaced rather than rolled; state on the release's claim."""
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(deployment)
    claim = one(manifests, "PersistentVolumeClaim")
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for container in containers(spec):
        assert {"name": "state", "mountPath": "/var/lib/baetyl-edge"} in container["volumeMounts"]


def test_every_container_is_locked_down(manifests: list[Manifest]) -> None:
    """The agent needs no root, no writable root and no capability to drive the API server."""
    spec = pod_spec(one(manifests, "Deployment"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is True  # the kube engine's credentials
    for container in containers(spec):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["limits"]


def test_the_agent_knows_its_image_for_the_node_broker(manifests: list[Manifest]) -> None:
    """The kube engine runs the node broker in the agent's own image (--node-broker-image)."""
    spec = pod_spec(one(manifests, "Deployment"))
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    args = agent["args"]
    assert args[args.index("--node-broker-image") + 1] == agent["image"]


def test_token_comes_from_a_secret(manifests: list[Manifest], renderer: Renderer) -> None:
    """The install token reaches the init container by secretKeyRef, never as a plain value."""
    init = pod_spec(one(manifests, "Deployment"))["initContainers"][0]
    env = env_of(init)
    assert env["ACTIVATION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-pybaetyl-edge-activation",
        "key": "token",
    }
    assert env["ACTIVATION_URL"]["value"] == "https://baetyl.example.com:9003"
    non_secrets = [m for m in manifests if m["kind"] != "Secret"]
    assert "bat_example-token-not-real" not in repr(non_secrets)
    assert "bat_example-token-not-real" not in renderer.notes(EDGE, EDGE_VALUES)

    existing = {"activation": {"token": "", "existingSecret": "tok", "existingSecretKey": "t"}}
    manifests = renderer.manifests(EDGE, EDGE_VALUES, existing)
    assert find(manifests, "Secret") == []
    init = pod_spec(one(manifests, "Deployment"))["initContainers"][0]
    ref = env_of(init)["ACTIVATION_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "tok", "key": "t"}


def test_rbac_covers_what_the_kube_engine_does_in_its_namespace(manifests: list[Manifest]) -> None:
    """Workloads, Services, ConfigMaps, Secrets in the apps' namespace; pods read; nothing more."""
    role = one(manifests, "Role")
    assert role["metadata"]["namespace"] == "baetyl-edge"
    rules = {
        (group, resource): rule["verbs"]
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("", "configmaps"): WRITE,
        ("", "secrets"): WRITE,
        ("", "services"): WRITE,
        ("apps", "deployments"): WRITE,
        ("apps", "daemonsets"): WRITE,
        ("batch", "jobs"): WRITE,
        ("", "pods"): ["get", "list"],
    }
    account = pod_spec(one(manifests, "Deployment"))["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "baetyl"}
    binding = one(manifests, "RoleBinding")
    assert binding["metadata"]["namespace"] == "baetyl-edge"
    assert binding["subjects"] == [subject]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    # Cluster-wide: reading its own namespace, by name.
    cluster_role = one(manifests, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["namespaces"],
            "resourceNames": ["baetyl-edge"],
            "verbs": ["get"],
        }
    ]
    assert one(manifests, "ClusterRoleBinding")["subjects"] == [subject]
    assert cluster_role["metadata"]["name"].startswith("baetyl-"), "unique per release namespace"


def test_apps_namespace_is_created_unless_it_is_the_releases(renderer: Renderer) -> None:
    """The apps' namespace is rendered (and kept on uninstall) only when it is another one."""
    namespace = one(renderer.manifests(EDGE, EDGE_VALUES), "Namespace")
    assert namespace["metadata"]["name"] == "baetyl-edge"
    assert namespace["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    same = renderer.manifests(EDGE, EDGE_VALUES, namespace="baetyl-edge")
    assert find(same, "Namespace") == []
    assert one(same, "Role")["metadata"]["namespace"] == "baetyl-edge"
    off = renderer.manifests(EDGE, EDGE_VALUES, {"apps": {"createNamespace": False}})
    assert find(off, "Namespace") == []


def test_rbac_can_be_left_to_the_operator(renderer: Renderer) -> None:
    """rbac.create=false renders no Role, binding or ClusterRole."""
    manifests = renderer.manifests(EDGE, EDGE_VALUES, {"rbac": {"create": False}})
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"activation": {"url": ""}}, "activation.url must be the cloud's activation endpoint"),
        ({"activation": {"caSha256": "abc"}}, "activation.caSha256 must be the 64 hex digits"),
        ({"activation": {"token": ""}}, "set activation.existingSecret"),
        ({"apps": {"namespace": "Apps"}}, 'apps.namespace "Apps" is not a Kubernetes namespace'),
    ],
    ids=["no-url", "bad-sha", "no-token", "bad-namespace"],
)
def test_edge_refuses_incomplete_activation(
    renderer: Renderer, values: dict[str, Any], message: str
) -> None:
    """Rendering fails, pointing at the install command to copy the values from."""
    assert message in renderer.failure(EDGE, EDGE_VALUES, values)


def test_defaults_alone_do_not_render(renderer: Renderer) -> None:
    """Without an install command's values the chart says where to get them."""
    assert "baetyl node init <name>" in renderer.failure(EDGE)


def test_activation_is_skipped_once_the_node_has_its_identity(
    manifests: list[Manifest], tmp_path: Path
) -> None:
    """The init container calls `baetyl edge activate` with its flags, and never again after."""
    init = pod_spec(one(manifests, "Deployment"))["initContainers"][0]
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "baetyl"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {calls}\nprintf "{{}}" > "$STATE_DIR/node.json"\n',
        encoding="utf-8",
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "PATH": f"{fake.parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "STATE_DIR": str(state),
        "ACTIVATION_URL": env_of(init)["ACTIVATION_URL"]["value"],
        "ACTIVATION_CA_SHA256": env_of(init)["ACTIVATION_CA_SHA256"]["value"],
        "ACTIVATION_TOKEN": "tok en$(no)",
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", init["command"][2]],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

    run()
    argv = calls.read_text(encoding="utf-8").splitlines()
    assert argv == [
        "edge",
        "activate",
        "--url",
        "https://baetyl.example.com:9003",
        "--ca-sha256",
        env["ACTIVATION_CA_SHA256"],
        "--token",
        "tok en$(no)",
        "--state-dir",
        str(state),
    ]
    calls.unlink()
    assert "activation skipped" in run().stdout
    assert not calls.exists()


def test_notes_say_how_to_follow_and_retry_activation(renderer: Renderer) -> None:
    """NOTES name the init container's log and how to pass on a new token, as the values hold it."""
    notes = renderer.notes(EDGE, EDGE_VALUES)
    assert "kubectl -n baetyl logs deployment/demo-pybaetyl-edge -c activate" in notes
    assert "upgrade demo <chart> --reuse-values --set activation.token=<token>" in notes
    assert "rollout restart deployment/demo-pybaetyl-edge" in notes
    existing = {"activation": {"token": "", "existingSecret": "gw-1-activation"}}
    notes = renderer.notes(EDGE, EDGE_VALUES, existing)
    assert "create secret generic gw-1-activation" in notes
    assert "--from-literal=token=<token>" in notes

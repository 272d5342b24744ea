"""Apps render to Kubernetes objects that the client's OpenAPI models accept without loss."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import kubernetes.client
import pytest
from pydantic import BaseModel

from edge.engines.base import AppSpec
from edge.engines.manifests import (
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_VERSION,
    ManifestError,
    Registry,
    render,
    service_name,
)

_MODELS = {
    "Deployment": "V1Deployment",
    "DaemonSet": "V1DaemonSet",
    "Job": "V1Job",
    "ConfigMap": "V1ConfigMap",
    "Secret": "V1Secret",
    "Service": "V1Service",
}
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _app(**spec: Any) -> AppSpec:
    base: dict[str, Any] = {
        "type": "container",
        "services": [
            {
                "name": "web",
                "image": "nginx:1.27",
                "command": ["nginx"],
                "args": ["-g", "daemon off;"],
                "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "EMPTY"}],
                "ports": [
                    {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
                    {"containerPort": 53, "protocol": "UDP"},
                ],
                "volumeMounts": [
                    {"name": "conf", "mountPath": "/etc/nginx/conf.d", "readOnly": True},
                    {"name": "certs", "mountPath": "/etc/certs"},
                    {"name": "logs", "mountPath": "/var/log/nginx"},
                ],
                "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "100m"},
                },
            },
            {"name": "sidecar", "image": "busybox:1.36"},
        ],
        "volumes": [
            {"name": "conf", "config": {"name": "web-conf", "version": "3"}},
            {"name": "certs", "secret": {"name": "web-tls", "version": "1"}},
            {"name": "logs", "hostPath": {"path": "/var/log/web"}},
        ],
    }
    base.update(spec)
    return AppSpec(
        name="web",
        version="42",
        spec=base,
        configs={"web-conf": {"default.conf": "server { listen 80; }\n"}},
        secrets={"web-tls": {"tls.key": "not-a-real-key"}},
    )


def _validated(obj: dict[str, Any]) -> BaseModel:
    """Parse ``obj`` with its OpenAPI model and check that serializing it gives ``obj`` back."""
    model: type[BaseModel] = getattr(kubernetes.client.models, _MODELS[obj["kind"]])
    parsed = model.model_validate(obj)  # unknown fields and missing required ones raise
    client = kubernetes.client.ApiClient()
    assert client.sanitize_for_serialization(parsed) == obj  # type: ignore[no-untyped-call]
    return parsed


def _by_kind(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize(
    ("workload", "kind"), [("deployment", "Deployment"), ("daemonset", "DaemonSet"), ("job", "Job")]
)
def test_every_object_is_a_valid_kubernetes_object(workload: str, kind: str) -> None:
    """Each workload kind renders objects their OpenAPI models accept and serialize back as is."""
    objects = render(_app(workload=workload, replicas=2), namespace="edge")
    assert [o["kind"] for o in objects] == [kind, "ConfigMap", "Secret", "Service"]
    for obj in objects:
        _validated(obj)
        assert _SUBDOMAIN.fullmatch(obj["metadata"]["name"])
        assert obj["metadata"]["namespace"] == "edge"
        assert obj["metadata"]["labels"] == {
            LABEL_APP: "web",
            LABEL_VERSION: "42",
            LABEL_MANAGED_BY: "pybaetyl",
        }


def test_deployment_maps_every_service_field() -> None:
    """Services become containers with their command, env, ports, mounts and resources."""
    deployment = render(_app(replicas=3, hostNetwork=True), namespace="edge")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {"matchLabels": {LABEL_APP: "web"}}
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    web, sidecar = pod["containers"]
    assert web == {
        "name": "web",
        "image": "nginx:1.27",
        "command": ["nginx"],
        "args": ["-g", "daemon off;"],
        "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "EMPTY", "value": ""}],
        "ports": [
            {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
            {"containerPort": 53, "protocol": "UDP"},
        ],
        "volumeMounts": [
            {"name": "conf", "mountPath": "/etc/nginx/conf.d", "readOnly": True},
            {"name": "certs", "mountPath": "/etc/certs", "readOnly": False},
            {"name": "logs", "mountPath": "/var/log/nginx", "readOnly": False},
        ],
        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}},
    }
    assert sidecar == {"name": "sidecar", "image": "busybox:1.36"}
    assert "restartPolicy" not in pod


def test_volumes_of_each_kind_are_wired_to_their_objects() -> None:
    """Config, secret and hostPath volumes point at the ConfigMap, Secret and host directory."""
    objects = _by_kind(render(_app(), namespace="edge"))
    pod = objects[("Deployment", "web")]["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "conf", "configMap": {"name": "web-web-conf"}},
        {"name": "certs", "secret": {"secretName": "web-web-tls"}},
        {"name": "logs", "hostPath": {"path": "/var/log/web"}},
    ]
    assert objects[("ConfigMap", "web-web-conf")]["data"] == {
        "default.conf": "server { listen 80; }\n"
    }
    secret = objects[("Secret", "web-web-tls")]
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["tls.key"]) == b"not-a-real-key"


def test_job_restarts_on_failure_and_runs_replicas_completions() -> None:
    """A job's pods restart on failure, and replicas sets completions and parallelism."""
    job = render(_app(workload="job", replicas=2), namespace="edge")[0]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert "selector" not in job["spec"]  # the API server generates it


def test_service_exposes_the_ports_of_each_service_that_has_some() -> None:
    """A ClusterIP Service per service with ports, one named port per container port."""
    objects = _by_kind(render(_app(), namespace="edge"))
    service = objects[("Service", "web-web")]
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {LABEL_APP: "web"},
        "ports": [
            {"name": "tcp-80", "port": 80, "targetPort": 80, "protocol": "TCP"},
            {"name": "udp-53", "port": 53, "targetPort": 53, "protocol": "UDP"},
        ],
    }
    assert ("Service", "web-sidecar") not in objects


def test_service_names_are_dns_labels_even_for_odd_app_names() -> None:
    """Dots, a leading digit and excess length still give a unique valid Service name."""
    assert service_name("web", "api") == "web-api"
    assert service_name("9.shop", "api") == "s-9-shop-api"
    long_a, long_b = service_name("a" * 60, "x"), service_name("a" * 60, "y")
    assert long_a != long_b
    for name in (long_a, long_b, service_name("9.shop", "api")):
        assert len(name) <= 63
        assert _DNS_1035.fullmatch(name)


def test_registries_become_an_image_pull_secret() -> None:
    """The app's registries become a dockerconfigjson Secret that the pod pulls with; one
    without credentials (a public registry) is left out."""
    base = _app(registries=[{"name": "company", "version": "2"}, {"name": "hub", "version": "1"}])
    app = AppSpec(
        base.name,
        base.version,
        base.spec,
        base.configs,
        base.secrets,
        registries={
            "company": {
                "address": "registry.example.com:5000",
                "username": "robot",
                "password": "pa55",
            },
            "hub": {"address": "docker.io", "username": "", "password": ""},
        },
    )
    objects = _by_kind(render(app, namespace="edge"))
    pull = objects[("Secret", "web-image-pull")]
    _validated(pull)
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(pull["data"][".dockerconfigjson"]))
    assert set(config["auths"]) == {"registry.example.com:5000"}
    entry = config["auths"]["registry.example.com:5000"]
    assert base64.b64decode(entry["auth"]) == b"robot:pa55"
    pod = objects[("Deployment", "web")]["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "web-image-pull"}]
    assert "pa55" not in repr(app)  # credentials stay out of logs of the spec


def test_registry_whose_credentials_are_missing_is_refused() -> None:
    """An app naming a registry the agent has not fetched cannot render half a pull secret."""
    with pytest.raises(ManifestError, match="registry 'company', but its credentials were not"):
        render(_app(registries=[{"name": "company", "version": "1"}]), namespace="edge")


def test_two_registries_with_one_address_are_refused() -> None:
    """The dockerconfigjson keeps one login per address: a second registry at the same address
    would replace the first without a word, so the app is refused naming both."""
    base = _app(registries=[{"name": "a", "version": "1"}, {"name": "b", "version": "1"}])
    same = {"address": "registry.example.com:5000", "username": "robot"}
    app = AppSpec(
        base.name,
        base.version,
        base.spec,
        base.configs,
        base.secrets,
        registries={"a": {**same, "password": "pw-a"}, "b": {**same, "password": "pw-b"}},
    )
    with pytest.raises(ManifestError) as caught:
        render(app, namespace="edge")
    message = str(caught.value)
    assert "registries 'a' and 'b', which both log in to 'registry.example.com:5000'" in message
    assert "pw-" not in message
    public = AppSpec(
        base.name,
        base.version,
        base.spec,
        base.configs,
        base.secrets,
        registries={
            "a": {**same, "password": "pw-a"},
            "b": {**same, "username": "", "password": ""},
        },
    )
    objects = _by_kind(render(public, namespace="edge"))  # a public one logs in to nothing
    config = json.loads(
        base64.b64decode(objects[("Secret", "web-image-pull")]["data"][".dockerconfigjson"])
    )
    assert base64.b64decode(config["auths"]["registry.example.com:5000"]["auth"]) == b"robot:pw-a"


def test_two_volumes_of_one_source_share_its_object() -> None:
    """A config, secret or certificate mounted by two volumes is rendered once and both pod
    volumes name it (Kubernetes allows it); objects of different sources that would share a name
    are still refused."""
    base = _app()
    spec = {
        **base.spec,
        "volumes": [
            {"name": f"{kind}-{n}", kind: {"name": "x", "version": "1"}}
            for kind in ("config", "secret", "certificate")
            for n in (1, 2)
        ],
    }
    spec["services"] = [
        {
            "name": "web",
            "image": "nginx:1.27",
            "volumeMounts": [
                {"name": volume["name"], "mountPath": f"/m/{volume['name']}"}
                for volume in spec["volumes"]
            ],
        }
    ]
    app = AppSpec(
        base.name,
        base.version,
        spec,
        configs={"x": {"a": "1"}},
        secrets={"x": {"s": "2"}},
        certificates={"x": {"tls.crt": "C", "tls.key": "K"}},
    )
    objects = render(app, namespace="edge")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "web"),
        ("ConfigMap", "web-x"),
        ("Secret", "web-x"),
        ("Secret", "web-cert-x"),
    ]
    for obj in objects:
        _validated(obj)
    assert objects[0]["spec"]["template"]["spec"]["volumes"] == [
        {"name": "config-1", "configMap": {"name": "web-x"}},
        {"name": "config-2", "configMap": {"name": "web-x"}},
        {"name": "secret-1", "secret": {"secretName": "web-x"}},
        {"name": "secret-2", "secret": {"secretName": "web-x"}},
        {"name": "certificate-1", "secret": {"secretName": "web-cert-x"}},
        {"name": "certificate-2", "secret": {"secretName": "web-cert-x"}},
    ]
    clash = {
        **spec,
        "volumes": [
            {"name": "s", "secret": {"name": "cert-x", "version": "1"}},
            {"name": "c", "certificate": {"name": "x", "version": "1"}},
        ],
    }
    clashing = AppSpec(
        base.name,
        base.version,
        clash,
        secrets={"cert-x": {"s": "2"}},
        certificates=app.certificates,
    )
    with pytest.raises(ManifestError, match="renders two Secret objects named 'web-cert-x'"):
        render(clashing, namespace="edge")


def test_certificate_volume_becomes_a_tls_secret() -> None:
    """A certificate volume is a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) mounted in
    the pod; new certificate data changes the template hash, so pods roll."""
    base = _app()
    spec = {**base.spec, "volumes": [{"name": "tls", "certificate": {"name": "plc"}}]}
    mount = {"name": "tls", "mountPath": "/tls"}
    spec["services"] = [{**spec["services"][0], "volumeMounts": [mount]}]
    files = {"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}
    app = AppSpec(base.name, base.version, spec, certificates={"plc": files})
    objects = _by_kind(render(app, namespace="edge"))
    secret = objects[("Secret", "web-cert-plc")]
    _validated(secret)
    assert secret["type"] == "kubernetes.io/tls"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == files
    pod = objects[("Deployment", "web")]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "tls", "secret": {"secretName": "web-cert-plc"}}]
    renewed = AppSpec(app.name, app.version, spec, certificates={"plc": {**files, "tls.crt": "N"}})
    before, after = render(app, namespace="edge")[0], render(renewed, namespace="edge")[0]
    assert (
        before["spec"]["template"]["metadata"]["annotations"]
        != after["spec"]["template"]["metadata"]["annotations"]
    )
    with pytest.raises(ManifestError, match="mounts the certificate 'plc', but its data was not"):
        render(AppSpec(app.name, app.version, spec), namespace="edge")


def test_changed_config_data_changes_the_pod_template() -> None:
    """New data in a mounted config changes the template hash, so pods roll."""
    before = render(_app(), namespace="edge")[0]
    app = _app()
    changed = AppSpec(
        app.name, app.version, app.spec, {"web-conf": {"default.conf": "x"}}, app.secrets
    )
    after = render(changed, namespace="edge")[0]
    assert (
        before["spec"]["template"]["metadata"]["annotations"]
        != after["spec"]["template"]["metadata"]["annotations"]
    )


def test_minimal_app_renders_only_a_workload() -> None:
    """An app without volumes, ports or registries is one plain Deployment."""
    app = AppSpec("tiny", "1", {"services": [{"name": "main", "image": "busybox"}]})
    (deployment,) = render(app, namespace="edge")
    _validated(deployment)
    assert deployment["spec"]["replicas"] == 1
    assert "annotations" not in deployment["spec"]["template"]["metadata"]


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            AppSpec("n", "1", {"type": "native", "services": [{"name": "p", "command": ["x"]}]}),
            "native app, which a Kubernetes node cannot run",
        ),
        (
            AppSpec(
                "w",
                "1",
                {
                    "services": [{"name": "s", "image": "i"}],
                    "volumes": [{"name": "v", "config": {"name": "c"}}],
                },
            ),
            "mounts the config 'c', but its data was not given",
        ),
        (
            AppSpec("a" * 64, "1", {"services": [{"name": "s", "image": "i"}]}),
            "cannot be a Kubernetes label value",
        ),
        (
            AppSpec("w", "1", {"workload": "cronjob", "services": [{"name": "s", "image": "i"}]}),
            "use deployment, daemonset or job",
        ),
    ],
)
def test_apps_kubernetes_cannot_hold_are_refused_with_a_reason(app: AppSpec, message: str) -> None:
    """An app that cannot become Kubernetes objects raises a ManifestError saying why."""
    with pytest.raises(ManifestError, match=re.escape(message)):
        render(app, namespace="edge")


def test_registry_address_with_a_scheme_is_refused() -> None:
    """A registry address is host[:port][/path], never a URL."""
    with pytest.raises(ManifestError, match="without a scheme"):
        Registry("https://registry.example.com", "u", "p")

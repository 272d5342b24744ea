"""What the cloud chart renders in each mode, and what it refuses."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import pytest
import yaml

from tests.deploy.charts import (
    CLOUD,
    REPLICATED,
    Manifest,
    Renderer,
    containers,
    env_of,
    find,
    one,
    pod_spec,
)
from tests.deploy.kube import WORKLOADS

MYSQL_URL = "mysql://baetyl:s3cret-Passw0rd@mysql.db.svc:3306/baetyl"
EXISTING_CA = {"ca": {"existingSecret": "my-ca"}}


def _cloud(manifests: list[Manifest]) -> dict[str, Any]:
    return next(
        c for c in pod_spec(one(manifests, "Deployment"))["containers"] if c["name"] == "baetyl"
    )


def _pods(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload name, pod labels, pod spec) of every workload."""
    return [
        (m["metadata"]["name"], m["spec"]["template"]["metadata"]["labels"], pod_spec(m))
        for m in manifests
        if m["kind"] in WORKLOADS
    ]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(params=["embedded", "replicated"])
def manifests(request: pytest.FixtureRequest, renderer: Renderer) -> list[Manifest]:
    """The chart rendered in each mode."""
    values = () if request.param == "embedded" else (REPLICATED,)
    return renderer.manifests(CLOUD, *values)


# --- both modes -------------------------------------------------------------------------------


def test_every_container_is_locked_down(manifests: list[Manifest]) -> None:
    """Non-root, read-only root, no privilege escalation or capabilities, seccomp RuntimeDefault."""
    for name, _labels, spec in _pods(manifests):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert context["runAsUser"] != 0, where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"], where
            # A read-only root needs a writable /tmp.
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where


def test_pods_have_no_service_links(manifests: list[Manifest]) -> None:
    """Service links would inject <SERVICE>_PORT variables; BAETYL_* ones would break the config."""
    for name, _labels, spec in _pods(manifests):
        assert spec["enableServiceLinks"] is False, name


def test_probes_hit_health_and_readiness_on_the_api_port(manifests: list[Manifest]) -> None:
    """Liveness and startup probe /healthz, readiness /readyz, all on the API container port."""
    cloud = _cloud(manifests)
    api_port = next(p for p in cloud["ports"] if p["name"] == "api")
    assert api_port["containerPort"] == 9004
    assert cloud["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert cloud["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert cloud["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}


def test_cloud_listens_on_all_interfaces_of_the_pod(manifests: list[Manifest]) -> None:
    """The API binds 0.0.0.0 in the pod (127.0.0.1 is its default), on the declared ports."""
    env = env_of(_cloud(manifests))
    everywhere = "0.0.0.0"  # noqa: S104 # what the chart must set, inside the pod
    assert env["BAETYL_API__HOST"]["value"] == everywhere
    assert env["BAETYL_API__ACTIVATION_HOST"]["value"] == everywhere
    assert env["BAETYL_API__PORT"]["value"] == "9004"
    assert env["BAETYL_API__ACTIVATION_PORT"]["value"] == "9003"
    assert env["BAETYL_DATA_DIR"]["value"] == "/var/lib/baetyl"


def test_services_select_the_cloud_pods_only(manifests: list[Manifest]) -> None:
    """Selectors match the Deployment's pods and never the CA hook's; target ports exist."""
    deployment = one(manifests, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    cloud_ports = {p["name"] for p in _cloud(manifests)["ports"]}
    hook_pods = [labels for name, labels, _ in _pods(manifests) if name.endswith("-ca-init")]
    assert hook_pods, "the CA hook Job is rendered by default"
    services = find(manifests, "Service")
    assert {s["metadata"]["name"] for s in services} == {"demo-pybaetyl", "demo-pybaetyl-api"}
    for service in services:
        selector = service["spec"]["selector"]
        assert _matches(selector, pod_labels)
        assert not any(_matches(selector, labels) for labels in hook_pods)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in cloud_ports
            declared = next(p for p in _cloud(manifests)["ports"] if p["name"] == port["name"])
            assert port["port"] == declared["containerPort"], "nodes are told the pod's ports"


def test_api_service_is_private(manifests: list[Manifest]) -> None:
    """The management API gets a ClusterIP Service of its own; the public one never exposes it."""
    api = one(manifests, "Service", "demo-pybaetyl-api")
    assert api["spec"]["type"] == "ClusterIP"
    assert [p["port"] for p in api["spec"]["ports"]] == [9004]
    public = one(manifests, "Service", "demo-pybaetyl")
    assert 9004 not in [p["port"] for p in public["spec"]["ports"]]


def test_ca_secret_is_mounted_only_in_the_seed_container(manifests: list[Manifest]) -> None:
    """The CA key reaches the data directory through the init container, not the server."""
    spec = pod_spec(one(manifests, "Deployment"))
    ca_volume = next(v for v in spec["volumes"] if v["name"] == "ca")
    assert ca_volume["secret"]["secretName"] == "demo-pybaetyl-ca"
    assert ca_volume["secret"]["defaultMode"] == 0o440
    (seed,) = spec["initContainers"]
    assert {"name": "ca", "mountPath": "/run/baetyl/ca", "readOnly": True} in seed["volumeMounts"]
    assert "ca" not in {m["name"] for m in _cloud(manifests)["volumeMounts"]}


def test_configmap_is_a_baetyl_toml_the_pod_reads(renderer: Renderer) -> None:
    """config values become TOML sections in the ConfigMap, mounted where BAETYL_CONFIG points."""
    config = {"shadow": {"max_batch": 128}, "pki": {"node_cert_days": 90}}
    manifests = renderer.manifests(CLOUD, {"config": config})
    toml = tomllib.loads(one(manifests, "ConfigMap")["data"]["baetyl.toml"])
    assert toml == config
    cloud = _cloud(manifests)
    assert env_of(cloud)["BAETYL_CONFIG"]["value"] == "/etc/baetyl/baetyl.toml"
    mount = next(m for m in cloud["volumeMounts"] if m["name"] == "config")
    assert mount == {"name": "config", "mountPath": "/etc/baetyl", "readOnly": True}


def test_config_change_rolls_the_pods(renderer: Renderer) -> None:
    """The pod template carries a checksum of the ConfigMap, so a config change restarts pods."""

    def checksum(*values: dict[str, Any]) -> str:
        deployment = one(renderer.manifests(CLOUD, *values), "Deployment")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() == checksum()
    assert checksum() != checksum({"config": {"shadow": {"max_batch": 64}}})


def test_public_host_names_the_server_certificate(renderer: Renderer) -> None:
    """The public host is told to nodes and is in the server certificate (as a DNS name or IP)."""
    env = env_of(_cloud(renderer.manifests(CLOUD)))
    assert env["BAETYL_API__PUBLIC_HOST"]["value"] == "demo-pybaetyl.baetyl.svc"
    names = env["BAETYL_PKI__SERVER_DNS_NAMES"]["value"].split(",")
    assert names[0] == "demo-pybaetyl.baetyl.svc"
    assert "demo-pybaetyl-api.baetyl.svc.cluster.local" in names
    assert "localhost" in names

    templated = {"api": {"publicHost": "{{ .Release.Name }}.example.com"}}
    env = env_of(_cloud(renderer.manifests(CLOUD, templated)))
    assert env["BAETYL_API__PUBLIC_HOST"]["value"] == "demo.example.com"
    assert "demo.example.com" in env["BAETYL_PKI__SERVER_DNS_NAMES"]["value"].split(",")

    env = env_of(_cloud(renderer.manifests(CLOUD, {"api": {"publicHost": "203.0.113.10"}})))
    assert env["BAETYL_PKI__SERVER_IPS"]["value"].split(",") == ["127.0.0.1", "::1", "203.0.113.10"]
    assert "203.0.113.10" not in env["BAETYL_PKI__SERVER_DNS_NAMES"]["value"].split(",")


def test_data_claim_is_kept_on_uninstall(renderer: Renderer) -> None:
    """The claim holding the CA journal, the keys and SQLite survives `helm uninstall`."""
    claim = one(renderer.manifests(CLOUD), "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    claim = one(
        renderer.manifests(CLOUD, {"persistence": {"keepOnUninstall": False}}),
        "PersistentVolumeClaim",
    )
    assert "annotations" not in claim["metadata"]


# --- embedded mode ----------------------------------------------------------------------------


def test_embedded_mode_runs_one_pod_with_the_broker(renderer: Renderer) -> None:
    """One replica, replaced (not rolled), the broker's mqtts port, SQLite: no database Secret."""
    manifests = renderer.manifests(CLOUD)
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    public = one(manifests, "Service", "demo-pybaetyl")
    assert {p["name"]: p["port"] for p in public["spec"]["ports"]} == {
        "activation": 9003,
        "mqtts": 8883,
    }
    env = env_of(_cloud(manifests))
    assert env["BAETYL_BROKER__PORT"]["value"] == "8883"
    assert "BAETYL_DATABASE__URL" not in env
    assert not [name for name in env if name.startswith("BAETYL_BUS__")]
    assert find(manifests, "Secret") == []
    assert find(manifests, "PodDisruptionBudget") == []


@pytest.mark.parametrize("replicas", [0, 2, 5])
def test_embedded_mode_refuses_other_replica_counts(renderer: Renderer, replicas: int) -> None:
    """Rendering fails with a message naming the value and the way out."""
    error = renderer.failure(CLOUD, {"replicaCount": replicas})
    assert f"replicaCount is {replicas}, but embedded mode runs exactly one replica" in error
    assert "mode=replicated" in error


def test_unknown_mode_is_refused(renderer: Renderer) -> None:
    """A mode other than embedded or replicated fails with the two choices."""
    error = renderer.failure(CLOUD, {"mode": "cluster"})
    assert 'mode is "cluster"; use embedded' in error


def test_persistence_off_uses_an_empty_dir(renderer: Renderer) -> None:
    """For trials the data directory can be an emptyDir; NOTES warn that it is lost."""
    values = {"persistence": {"enabled": False}}
    manifests = renderer.manifests(CLOUD, values)
    assert find(manifests, "PersistentVolumeClaim") == []
    data = next(v for v in pod_spec(one(manifests, "Deployment"))["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}
    assert "WARNING: persistence.enabled is false" in renderer.notes(CLOUD, values)


# --- the CA -----------------------------------------------------------------------------------


def test_ca_hook_job_exists_only_without_an_existing_secret(renderer: Renderer) -> None:
    """No ca.existingSecret: a pre-install hook Job and its RBAC; with one: none of them."""
    hooks = [
        m
        for m in renderer.manifests(CLOUD)
        if "helm.sh/hook" in m["metadata"].get("annotations", {})
    ]
    assert sorted(m["kind"] for m in hooks) == ["Job", "Role", "RoleBinding", "ServiceAccount"]
    for hook in hooks:
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    weights = {m["kind"]: int(m["metadata"]["annotations"]["helm.sh/hook-weight"]) for m in hooks}
    assert max(weights["ServiceAccount"], weights["Role"]) < weights["RoleBinding"] < weights["Job"]

    manifests = renderer.manifests(CLOUD, EXISTING_CA)
    assert find(manifests, "Job") == []
    assert find(manifests, "Role") == []
    assert find(manifests, "RoleBinding") == []
    assert [sa["metadata"]["name"] for sa in find(manifests, "ServiceAccount")] == ["demo-pybaetyl"]
    volume = next(v for v in pod_spec(one(manifests, "Deployment"))["volumes"] if v["name"] == "ca")
    assert volume["secret"]["secretName"] == "my-ca"


def test_ca_hook_may_create_secrets_and_nothing_else(renderer: Renderer) -> None:
    """The hook's Role grants create on Secrets only, bound to the hook's own account."""
    manifests = renderer.manifests(CLOUD)
    role = one(manifests, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    binding = one(manifests, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    job = one(manifests, "Job")
    account = pod_spec(job)["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "baetyl"}
    ]
    assert pod_spec(job)["automountServiceAccountToken"] is True
    # The cloud's own pods get no API token at all.
    assert pod_spec(one(manifests, "Deployment"))["automountServiceAccountToken"] is False
    env = env_of(pod_spec(job)["containers"][0])
    assert env["CA_SECRET_NAME"]["value"] == "demo-pybaetyl-ca"


# --- replicated mode --------------------------------------------------------------------------


def test_replicated_mode_scales_without_the_embedded_broker(renderer: Renderer) -> None:
    """N replicas rolled one by one; no mqtts port or Service; the external bus is configured."""
    manifests = renderer.manifests(CLOUD, REPLICATED)
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    for service in find(manifests, "Service"):
        for port in service["spec"]["ports"]:
            assert port["name"] != "mqtts"
            assert port["port"] != 8883
    cloud = _cloud(manifests)
    assert "mqtts" not in {p["name"] for p in cloud["ports"]}
    env = env_of(cloud)
    assert "BAETYL_BROKER__PORT" not in env
    assert {name: env[name]["value"] for name in env if name.startswith("BAETYL_BUS__")} == {
        "BAETYL_BUS__MODE": "external",
        "BAETYL_BUS__URL": "mqtts://emqx.mqtt.svc:8884",
        "BAETYL_BUS__PUBLIC_ADDRESS": "mqtt.example.com:8883",
    }
    assert one(manifests, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    budget = one(manifests, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert "connect to MQTT at mqtt.example.com:8883" in renderer.notes(CLOUD, REPLICATED)


@pytest.mark.parametrize(
    "database",
    [
        {"existingSecret": "baetyl-database", "existingSecretKey": "url"},
        {"existingSecret": "", "url": MYSQL_URL},
    ],
    ids=["existing-secret", "url-value"],
)
def test_mysql_url_only_ever_comes_from_a_secret(
    renderer: Renderer, database: dict[str, str]
) -> None:
    """The URL reaches the pod through a secretKeyRef; it is in no ConfigMap, env value or NOTES."""
    values = {"database": database}
    manifests = renderer.manifests(CLOUD, REPLICATED, values)
    ref = env_of(_cloud(manifests))["BAETYL_DATABASE__URL"]
    assert "value" not in ref
    secrets = find(manifests, "Secret")
    if database["existingSecret"]:
        assert ref["valueFrom"]["secretKeyRef"] == {"name": "baetyl-database", "key": "url"}
        assert secrets == []
    else:
        (secret,) = secrets
        assert ref["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "url",
        }
        assert base64.b64decode(secret["data"]["url"]).decode() == MYSQL_URL
    public = [m for m in manifests if m["kind"] != "Secret"]
    for fragment in (MYSQL_URL, "s3cret-Passw0rd"):
        assert fragment not in yaml.safe_dump_all(public)
        assert fragment not in renderer.notes(CLOUD, REPLICATED, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"database": {"existingSecret": ""}},
            "replicated mode needs a MySQL database shared by the replicas",
        ),
        (
            {"database": {"existingSecret": "", "url": "sqlite:///x.db"}},
            "database.url must start with mysql://",
        ),
        ({"bus": {"url": ""}}, "replicated mode needs an external MQTT broker: set bus.url"),
        ({"bus": {"publicAddress": ""}}, "replicated mode needs bus.publicAddress"),
        (
            {"persistence": {"accessModes": ["ReadWriteOnce"]}},
            "set persistence.accessModes to [ReadWriteMany]",
        ),
        ({"persistence": {"enabled": False}}, "replicated mode needs persistence.enabled"),
    ],
    ids=["no-database", "sqlite", "no-bus", "no-public-address", "rwo", "no-persistence"],
)
def test_replicated_mode_refuses_what_cannot_be_shared(
    renderer: Renderer, values: dict[str, Any], message: str
) -> None:
    """Rendering fails with a message that says what to set."""
    assert message in renderer.failure(CLOUD, REPLICATED, values)


def test_replicated_mode_accepts_an_existing_claim(renderer: Renderer) -> None:
    """An existing claim is used as is (its access mode is the owner's business); none is made."""
    values = {"persistence": {"existingClaim": "shared", "accessModes": ["ReadWriteOnce"]}}
    manifests = renderer.manifests(CLOUD, REPLICATED, values)
    assert find(manifests, "PersistentVolumeClaim") == []
    data = next(v for v in pod_spec(one(manifests, "Deployment"))["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"] == {"claimName": "shared"}


# --- NOTES ------------------------------------------------------------------------------------


def test_notes_give_the_first_steps(renderer: Renderer) -> None:
    """NOTES.txt: rollout, a token from inside the pod, port-forward, node create and init."""
    notes = renderer.notes(CLOUD)
    assert notes.startswith("pybaetyl 0.1.0.dev0 is installed as demo in namespace baetyl")
    for step in (
        "kubectl -n baetyl rollout status deployment/demo-pybaetyl",
        "kubectl -n baetyl exec deployment/demo-pybaetyl -c baetyl -- \\\n"
        "       baetyl tokens create --name admin | tail -1",
        "kubectl -n baetyl port-forward service/demo-pybaetyl-api 9004:9004",
        "baetyl node create -f node.yaml",
        "baetyl node init gw-1",
        "https://demo-pybaetyl.baetyl.svc:9003",
        "connect to MQTT at demo-pybaetyl.baetyl.svc:8883",
        "NOTE: api.publicHost is not set",
    ):
        assert step in notes
    assert "is upgraded as demo" in renderer.notes(CLOUD, upgrade=True)
    notes = renderer.notes(CLOUD, {"api": {"publicHost": "baetyl.example.com"}})
    assert "NOTE: api.publicHost" not in notes
    assert "https://baetyl.example.com:9003" in notes


def test_extra_env_and_volumes_reach_the_cloud_container(renderer: Renderer) -> None:
    """extraEnv (rendered as templates), extraVolumes and extraVolumeMounts are passed through."""
    values = {
        "extraEnv": [{"name": "RELEASE", "value": "{{ .Release.Name }}-{{ .Release.Namespace }}"}],
        "extraVolumes": [{"name": "broker-ca", "secret": {"secretName": "broker-ca"}}],
        "extraVolumeMounts": [{"name": "broker-ca", "mountPath": "/etc/baetyl-broker"}],
    }
    deployment = one(renderer.manifests(CLOUD, values), "Deployment")
    cloud = _cloud([deployment])
    assert env_of(cloud)["RELEASE"] == {"name": "RELEASE", "value": "demo-baetyl"}
    assert {"name": "broker-ca", "mountPath": "/etc/baetyl-broker"} in cloud["volumeMounts"]
    volumes = pod_spec(deployment)["volumes"]
    assert {"name": "broker-ca", "secret": {"secretName": "broker-ca"}} in volumes

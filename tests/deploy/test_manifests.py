"""Every object the charts render, with every supported shape of values, is one Kubernetes takes."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.charts import (
    CLOUD,
    EDGE,
    EDGE_VALUES,
    NAMESPACE,
    REPLICATED,
    Manifest,
    Renderer,
    Values,
    one,
)
from tests.deploy.kube import CLUSTER_SCOPED, problems, reference_problems

CA_SECRET = "Secret/demo-pybaetyl-ca"  # made by the pre-install hook Job, not by the release


@dataclass(frozen=True)
class Variant:
    """A chart with values, and the objects it may refer to without rendering them."""

    chart: Path
    values: tuple[Values, ...] = ()
    namespace: str = NAMESPACE
    external: frozenset[str] = field(default_factory=frozenset)


VARIANTS = {
    "cloud-defaults": Variant(CLOUD, external=frozenset({CA_SECRET})),
    "cloud-replicated": Variant(
        CLOUD, (REPLICATED,), external=frozenset({CA_SECRET, "Secret/baetyl-database"})
    ),
    "cloud-replicated-url-value": Variant(
        CLOUD,
        (REPLICATED, {"database": {"existingSecret": "", "url": "mysql://u:p@db:3306/baetyl"}}),
        external=frozenset({CA_SECRET}),
    ),
    "cloud-replicated-existing-claim": Variant(
        CLOUD,
        (REPLICATED, {"persistence": {"existingClaim": "shared", "accessModes": None}}),
        external=frozenset({CA_SECRET, "Secret/baetyl-database", "PersistentVolumeClaim/shared"}),
    ),
    "cloud-existing-ca": Variant(
        CLOUD, ({"ca": {"existingSecret": "my-ca"}},), external=frozenset({"Secret/my-ca"})
    ),
    "cloud-load-balancer-ip": Variant(
        CLOUD,
        (
            {
                "api": {"publicHost": "203.0.113.10"},
                "service": {
                    "public": {
                        "type": "LoadBalancer",
                        "annotations": {"example.com/lb": "nlb"},
                        "loadBalancerSourceRanges": ["10.0.0.0/8"],
                    }
                },
            },
        ),
        external=frozenset({CA_SECRET}),
    ),
    "cloud-everything-optional": Variant(
        CLOUD,
        (
            {
                "fullnameOverride": "cloud",
                "imagePullSecrets": [{"name": "registry"}],
                "podAnnotations": {"example.com/team": "edge"},
                "podLabels": {"team": "edge"},
                "extraEnv": [{"name": "TZ", "value": "UTC"}],
                "config": {"shadow": {"max_batch": 128}},
                "persistence": {"enabled": False},
                "serviceAccount": {"create": False, "name": "cloud-sa"},
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "high",
                "startupProbe": {"enabled": False},
                "extraVolumes": [{"name": "broker-ca", "secret": {"secretName": "broker-ca"}}],
                "extraVolumeMounts": [
                    {"name": "broker-ca", "mountPath": "/etc/baetyl-broker", "readOnly": True}
                ],
            },
        ),
        external=frozenset({"Secret/cloud-ca", "ServiceAccount/cloud-sa", "Secret/broker-ca"}),
    ),
    "edge": Variant(EDGE, (EDGE_VALUES,)),
    "edge-existing-secret": Variant(
        EDGE,
        (
            EDGE_VALUES,
            {"activation": {"token": "", "existingSecret": "tok", "existingSecretKey": "t"}},
        ),
        external=frozenset({"Secret/tok"}),
    ),
    "edge-apps-in-release-namespace": Variant(EDGE, (EDGE_VALUES,), namespace="baetyl-edge"),
}


def _render(renderer: Renderer, variant: Variant) -> list[Manifest]:
    return renderer.manifests(variant.chart, *variant.values, namespace=variant.namespace)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_objects_match_the_kubernetes_models(renderer: Renderer, variant: Variant) -> None:
    """Each object deserializes into its kubernetes model and back unchanged: no unknown field."""
    manifests = _render(renderer, variant)
    assert manifests
    found = {f"{m['kind']}/{m['metadata']['name']}": problems(m) for m in manifests}
    assert {name: p for name, p in found.items() if p} == {}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_references_resolve(renderer: Renderer, variant: Variant) -> None:
    """Volumes, secret refs, accounts, named ports and role refs name objects that will exist."""
    manifests = _render(renderer, variant)
    assert reference_problems(manifests, external=set(variant.external)) == []


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_objects_are_named_once_and_namespaced(renderer: Renderer, variant: Variant) -> None:
    """No two objects share kind and name; namespaced ones name their namespace explicitly."""
    manifests = _render(renderer, variant)
    keys = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests]
    assert len(keys) == len(set(keys))
    for m in manifests:
        if m["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in m["metadata"]
        else:
            assert m["metadata"].get("namespace"), f"{m['kind']} {m['metadata']['name']}"


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_objects_carry_the_standard_labels(renderer: Renderer, variant: Variant) -> None:
    """Every object has the app.kubernetes.io labels and the chart label, the release's values."""
    manifests = _render(renderer, variant)
    for m in manifests:
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == variant.chart.name
        assert labels["helm.sh/chart"] == f"{variant.chart.name}-0.1.0"
        assert labels["app.kubernetes.io/version"] == "0.1.0.dev0"


def test_the_model_check_catches_mistakes(renderer: Renderer) -> None:
    """The check itself: an unknown field, a number where a string belongs, a missing field."""
    rendered = one(renderer.manifests(CLOUD), "Deployment")
    assert problems(rendered) == []

    typo = copy.deepcopy(rendered)
    typo["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/"
    assert any("httpGet.paht: not a field" in p for p in problems(typo))

    number = copy.deepcopy(rendered)
    number["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = 9004
    assert any("valid string" in p for p in problems(number)), problems(number)

    missing = copy.deepcopy(rendered)
    del missing["spec"]["template"]["spec"]["initContainers"][0]["name"]
    assert any("the model refuses it" in p for p in problems(missing))

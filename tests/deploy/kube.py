"""Checking rendered manifests against Kubernetes' own models, without an API server.

`problems` deserializes an object into its model from the ``kubernetes`` package (which checks
required fields and enums) and serializes it back: the models drop unknown fields and coerce
scalars silently, so any difference between the two is a field Kubernetes would reject or read
differently (a typo, a number where a string belongs). It adds the rules of the API server that
the models do not know: name formats, label values, port names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from kubernetes import client

from tests.deploy.charts import Manifest, containers, pod_spec

__all__ = ["API_VERSIONS", "CLUSTER_SCOPED", "WORKLOADS", "problems", "reference_problems"]

API_VERSIONS = {
    "ConfigMap": "v1",
    "Namespace": "v1",
    "PersistentVolumeClaim": "v1",
    "Secret": "v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "Deployment": "apps/v1",
    "Job": "batch/v1",
    "PodDisruptionBudget": "policy/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
}
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})
WORKLOADS = frozenset({"Deployment", "Job"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def _differences(sent: Any, kept: Any, path: str) -> Iterator[str]:
    if isinstance(sent, Mapping) and isinstance(kept, Mapping):
        for key in sent:
            if key not in kept:
                yield f"{path}.{key}: not a field of the Kubernetes model (or null)"
            else:
                yield from _differences(sent[key], kept[key], f"{path}.{key}")
        for key in kept:
            if key not in sent:
                yield f"{path}.{key}: added by the model"
    elif isinstance(sent, list) and isinstance(kept, list):
        if len(sent) != len(kept):
            yield f"{path}: {len(sent)} items became {len(kept)}"
        for index, (a, b) in enumerate(zip(sent, kept, strict=False)):
            yield from _differences(a, b, f"{path}[{index}]")
    elif type(sent) is not type(kept) or sent != kept:
        yield f"{path}: {sent!r} ({type(sent).__name__}) is read as {kept!r}"


def _model_problems(doc: Manifest) -> list[str]:
    kind = doc["kind"]
    with client.ApiClient() as api:
        try:
            model = api._ApiClient__deserialize(doc, f"V1{kind}")  # the one way to skip HTTP
        except (ValueError, TypeError) as exc:
            return [f"{kind}: the model refuses it: {exc}"]
        kept = api.sanitize_for_serialization(model)
    return list(_differences(doc, kept, kind))


def _name_problems(doc: Manifest) -> Iterator[str]:
    kind, metadata = doc["kind"], doc["metadata"]
    name = metadata["name"]
    if len(name) > 63 or not _DNS_SUBDOMAIN.match(name):
        yield f"{kind} name {name!r} is not a DNS name of at most 63 characters"
    if kind == "Service" and not _DNS_1035.match(name):
        yield f"Service name {name!r} is not a DNS-1035 label"
    for key, value in metadata.get("labels", {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            yield f"{kind} {name}: label {key}={value!r} is not a valid label value"
    for key, value in metadata.get("annotations", {}).items():
        if not isinstance(value, str):
            yield f"{kind} {name}: annotation {key} is {value!r}, not a string"
    if kind in WORKLOADS:
        for container in containers(pod_spec(doc)):
            if not _DNS_LABEL.match(container["name"]):
                yield f"{kind} {name}: container name {container['name']!r} is not a DNS label"
            for port in container.get("ports", []):
                if len(port.get("name", "")) > 15 or not _PORT_NAME.match(port.get("name", "")):
                    yield f"{kind} {name}: port name {port.get('name')!r} is not valid"
            for env in container.get("env", []):
                if not _ENV_NAME.match(env["name"]):
                    yield f"{kind} {name}: env name {env['name']!r} is not valid"


def problems(doc: Manifest) -> list[str]:
    """What Kubernetes would refuse or read differently in ``doc``; empty if nothing."""
    kind = doc.get("kind")
    if kind not in API_VERSIONS:
        return [f"unexpected kind {kind!r}; add it to API_VERSIONS if it is meant"]
    found = []
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        found.append(f"{kind} has apiVersion {doc.get('apiVersion')!r}, not {API_VERSIONS[kind]}")
    found += _model_problems(doc)
    if not found:  # the formats below read fields the model has checked are there
        found += _name_problems(doc)
    return found


def reference_problems(manifests: list[Manifest], *, external: set[str]) -> list[str]:
    """References between objects that point nowhere.

    A pod's ConfigMap, Secret and claim volumes, secretKeyRefs and service account; a probe's or
    Service's named port; a binding's role and subjects. ``external`` names objects that are
    expected to exist outside the release (``"Secret/name"``, ``"PersistentVolumeClaim/name"``).
    """
    rendered = {f"{m['kind']}/{m['metadata']['name']}" for m in manifests} | external
    found: list[str] = []

    def need(ref: str, where: str) -> None:
        if ref not in rendered:
            found.append(f"{where} refers to {ref}, which is neither rendered nor expected")

    for m in manifests:
        kind, name = m["kind"], m["metadata"]["name"]
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            need(f"{m['roleRef']['kind']}/{m['roleRef']['name']}", f"{kind} {name}")
            for subject in m["subjects"]:
                need(f"ServiceAccount/{subject['name']}", f"{kind} {name}")
        if kind not in WORKLOADS:
            continue
        spec = pod_spec(m)
        where = f"{kind} {name}"
        need(f"ServiceAccount/{spec.get('serviceAccountName', 'default')}", where)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                need(f"ConfigMap/{volume['configMap']['name']}", where)
            if "secret" in volume:
                need(f"Secret/{volume['secret']['secretName']}", where)
            if "persistentVolumeClaim" in volume:
                need(f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}", where)
        for container in containers(spec):
            ports = {p["name"] for p in container.get("ports", [])}
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    found.append(f"{where}: mount of the missing volume {mount['name']}")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    need(f"Secret/{ref['name']}", where)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    found.append(f"{where}: {probe} names the port {port!r}, not declared")
    return found

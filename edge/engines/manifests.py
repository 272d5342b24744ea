"""The Kubernetes objects that run one app, rendered as plain dicts (pure: no I/O, no client).

:func:`render` parses an :class:`~edge.engines.base.AppSpec` of type ``container`` once
(:class:`~edge.engines.spec.AppModel`, shared with the native engine) and turns it into:

* one workload per app — a ``Deployment``, ``DaemonSet`` or ``Job`` (the app's ``workload``) whose
  pod has one container per service, the app's volumes, ``hostNetwork`` and image pull secret;
* a ``ConfigMap`` named ``<app>-<config>`` per config volume and an ``Opaque`` ``Secret`` named
  ``<app>-<secret>`` per secret volume, holding the data the agent fetched;
* a ``kubernetes.io/tls`` ``Secret`` named ``<app>-cert-<certificate>`` per certificate volume,
  with ``tls.crt``, ``tls.key`` and, when the certificate has a CA, ``ca.crt`` (the keys
  cert-manager uses; Kubernetes allows extra keys beside the two a TLS Secret needs), so the
  container sees the same three files as a native app;
* an image pull ``Secret`` (``kubernetes.io/dockerconfigjson``) named ``<app>-image-pull`` with
  the app's registries (``AppSpec.registries``, the app's ``registries: [{name}]`` as fetched),
  named in the pod's ``imagePullSecrets``;
* a ``ClusterIP`` ``Service`` named ``<app>-<service>`` per service that exposes ports.

Every object carries the labels :data:`LABEL_APP`, :data:`LABEL_VERSION` and
:data:`LABEL_MANAGED_BY`, which the kube engine selects on to find what it runs and what is
garbage. The pod template also carries a hash of the mounted configs, secrets and certificates,
so a change of their data rolls the pods even when the app version stays the same.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edge.engines.base import AppSpec
from edge.engines.spec import AppModel, ServiceModel, SpecError, VolumeKind, Workload
from edge.errors import ManifestError

__all__ = [
    "ANNOTATION_DATA_HASH",
    "LABEL_APP",
    "LABEL_MANAGED_BY",
    "LABEL_VERSION",
    "MANAGER",
    "ManifestError",
    "Registry",
    "render",
    "service_name",
]

LABEL_APP: Final = "baetyl-app-name"
LABEL_VERSION: Final = "baetyl-app-version"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "pybaetyl"
ANNOTATION_DATA_HASH: Final = "pybaetyl.io/data-hash"

_DNS_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN: Final = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL_VALUE: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


@dataclass(frozen=True, slots=True)
class Registry:
    """Credentials to pull images from one registry (``host[:port][/path]``)."""

    address: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.address or "://" in self.address:
            raise ManifestError(
                f"Registry address {self.address!r} is not valid; "
                "give host[:port][/path] without a scheme, e.g. registry.example.com:5000."
            )


def render(app: AppSpec, *, namespace: str) -> list[dict[str, Any]]:
    """Return the Kubernetes objects that run ``app`` in ``namespace``, workload first.

    Raises :class:`ManifestError` when the app cannot run on Kubernetes (a spec that does not
    parse, not a container app, a name Kubernetes cannot hold, a mounted config, secret or
    certificate whose data is missing, a registry named by the app whose credentials are missing
    or malformed).
    """
    try:
        model = AppModel.parse(app.spec)
    except SpecError as exc:
        raise ManifestError(f"The spec of app {app.name!r} cannot be used: {exc}") from None
    if model.type != "container":
        raise ManifestError(
            f"App {app.name!r} is a {model.type} app, which a Kubernetes node cannot run; "
            "deploy it to a native node or package it as a container app."
        )
    _check_label_value(app.name, f"App name {app.name!r}")
    _check_label_value(app.version, f"The version {app.version!r} of app {app.name!r}")
    labels = {LABEL_APP: app.name, LABEL_VERSION: app.version, LABEL_MANAGED_BY: MANAGER}

    def meta(name: str, what: str) -> dict[str, Any]:
        if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            raise ManifestError(
                f"The {what} name {name!r} of app {app.name!r} is not a valid Kubernetes name; "
                "shorten the app or volume name (at most 253 characters in all)."
            )
        return {"name": name, "namespace": namespace, "labels": dict(labels)}

    # Keyed by what they hold (``config/<name>``, ...). Two volumes may mount the same config,
    # secret or certificate (at different paths, or for different containers): Kubernetes allows
    # two volumes of one ConfigMap or Secret, and a native node writes each volume's own files.
    # Keyed so, its object is rendered once and both volumes name it; listed twice, it would be
    # two objects of one name, which the check at the end refuses.
    data_objects: dict[str, dict[str, Any]] = {}
    pod_volumes: list[dict[str, Any]] = []
    mounted: dict[str, dict[str, str]] = {}
    for volume in model.volumes:
        name = volume.name
        if volume.kind is VolumeKind.CONFIG:
            config = volume.source
            data = _volume_data(app, app.configs, config, "config")
            object_name = f"{app.name}-{config}"
            data_objects[f"config/{config}"] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": meta(object_name, "ConfigMap"),
                "data": dict(data),
            }
            pod_volumes.append({"name": name, "configMap": {"name": object_name}})
            mounted[f"config/{config}"] = data
        elif volume.kind is VolumeKind.SECRET:
            secret = volume.source
            data = _volume_data(app, app.secrets, secret, "secret")
            object_name = f"{app.name}-{secret}"
            data_objects[f"secret/{secret}"] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(object_name, "Secret"),
                "type": "Opaque",
                "data": {key: _b64(value) for key, value in data.items()},
            }
            pod_volumes.append({"name": name, "secret": {"secretName": object_name}})
            mounted[f"secret/{secret}"] = data
        elif volume.kind is VolumeKind.CERTIFICATE:
            certificate = volume.source
            data = _volume_data(app, app.certificates, certificate, "certificate")
            object_name = f"{app.name}-cert-{certificate}"
            data_objects[f"certificate/{certificate}"] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(object_name, "certificate Secret"),
                "type": "kubernetes.io/tls",
                "data": {key: _b64(value) for key, value in data.items()},
            }
            pod_volumes.append({"name": name, "secret": {"secretName": object_name}})
            mounted[f"certificate/{certificate}"] = data
        else:
            pod_volumes.append({"name": name, "hostPath": {"path": volume.source}})

    pod: dict[str, Any] = {"containers": [_container(s) for s in model.services]}
    if pod_volumes:
        pod["volumes"] = pod_volumes
    if model.host_network:
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    registries = _registries(app, model)
    if registries:
        pull_secret = f"{app.name}-image-pull"
        data_objects["registries"] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(pull_secret, "image pull Secret"),
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": _b64(_docker_config(registries))},
        }
        pod["imagePullSecrets"] = [{"name": pull_secret}]

    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod}
    if mounted:
        digest = hashlib.sha256(json.dumps(mounted, sort_keys=True).encode()).hexdigest()
        template["metadata"]["annotations"] = {ANNOTATION_DATA_HASH: digest[:16]}
    objects = [
        _workload(model, app.name, meta(app.name, "workload"), template),
        *data_objects.values(),
        *_services(app.name, model, labels, namespace),
    ]
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in seen:
            raise ManifestError(
                f"App {app.name!r} renders two {key[0]} objects named {key[1]!r}; "
                "rename one of its volumes or services."
            )
        seen.add(key)
    return objects


def _check_label_value(value: str, what: str) -> None:
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        raise ManifestError(
            f"{what} cannot be a Kubernetes label value; use at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit."
        )


def _volume_data(
    app: AppSpec, given: Mapping[str, dict[str, str]], name: str, what: str
) -> dict[str, str]:
    if name not in given:
        raise ManifestError(
            f"App {app.name!r} mounts the {what} {name!r}, but its data was not given; "
            f"fetch the {what} before applying the app."
        )
    return given[name]


def _registries(app: AppSpec, model: AppModel) -> dict[str, Registry]:
    """The credentials of every registry the app names, checked; a registry without a username
    or password (a public one) has nothing to authenticate and is left out."""
    found: dict[str, Registry] = {}
    for name in model.registries:
        data = app.registries.get(name)
        if data is None:
            raise ManifestError(
                f"App {app.name!r} pulls its images with the registry {name!r}, but its "
                "credentials were not given; fetch the registry before applying the app."
            )
        registry = Registry(
            str(data.get("address", "")),
            str(data.get("username", "")),
            str(data.get("password", "")),
        )
        if not (registry.username or registry.password):
            continue
        # .dockerconfigjson's auths keep one login per address: a second would replace the first
        # without a word, and the pull would fail later as unauthorised. The cloud refuses such
        # an app; this holds for a spec that reached the node anyway.
        clash = next((other for other, r in found.items() if r.address == registry.address), None)
        if clash is not None:
            raise ManifestError(
                f"App {app.name!r} pulls with the registries {clash!r} and {name!r}, which both "
                f"log in to {registry.address!r}; an image pull secret holds one login per "
                "address: remove one of them from the app's registries."
            )
        found[name] = registry
    return found


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _docker_config(registries: Mapping[str, Registry]) -> str:
    auths = {
        r.address: {
            "username": r.username,
            "password": r.password,
            "auth": _b64(f"{r.username}:{r.password}"),
        }
        for r in registries.values()
    }
    return json.dumps({"auths": auths}, sort_keys=True)


def _container(service: ServiceModel) -> dict[str, Any]:
    container: dict[str, Any] = {"name": service.name, "image": service.image}
    if service.command:
        container["command"] = list(service.command)
    if service.args:
        container["args"] = list(service.args)
    if service.env:
        container["env"] = [{"name": name, "value": value} for name, value in service.env]
    if service.ports:
        ports = []
        for port in service.ports:
            mapped = {"containerPort": port.container_port}
            if port.host_port is not None:
                mapped["hostPort"] = port.host_port
            ports.append({**mapped, "protocol": port.protocol})
        container["ports"] = ports
    if service.mounts:
        container["volumeMounts"] = [
            {"name": m.volume, "mountPath": m.path, "readOnly": m.read_only} for m in service.mounts
        ]
    resources = {
        kind: dict(quantities)
        for kind, quantities in (("limits", service.limits), ("requests", service.requests))
        if quantities
    }
    if resources:
        container["resources"] = resources
    return container


def _workload(
    model: AppModel, app: str, metadata: dict[str, Any], template: dict[str, Any]
) -> dict[str, Any]:
    replicas = model.replicas
    selector = {"matchLabels": {LABEL_APP: app}}
    if model.workload is Workload.DEPLOYMENT:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata,
            "spec": {"replicas": replicas, "selector": selector, "template": template},
        }
    if model.workload is Workload.DAEMONSET:
        return {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": metadata,
            "spec": {"selector": selector, "template": template},
        }
    template["spec"]["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"completions": replicas, "parallelism": replicas, "template": template},
    }


def _services(
    app: str, model: AppModel, labels: dict[str, str], namespace: str
) -> list[dict[str, Any]]:
    services = []
    for service in model.services:
        if not service.ports:
            continue
        ports = [
            {
                "name": f"{p.protocol.lower()}-{p.container_port}",
                "port": p.container_port,
                "targetPort": p.container_port,
                "protocol": p.protocol,
            }
            for p in service.ports
        ]
        services.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": service_name(app, service.name),
                    "namespace": namespace,
                    "labels": dict(labels),
                },
                "spec": {
                    "type": "ClusterIP",
                    "selector": {LABEL_APP: app},
                    "ports": ports,
                },
            }
        )
    return services


def service_name(app: str, service: str) -> str:
    """The DNS-1035 label naming the Service of ``service``: ``<app>-<service>``, made valid.

    Dots become dashes, a leading digit gets an ``s-`` prefix, and a name longer than 63
    characters is cut and ends with a hash of the full name, so it stays unique.
    """
    name = f"{app}-{service}".replace(".", "-")
    if not name[0].isalpha():
        name = f"s-{name}"
    if len(name) > 63:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name

"""A stand-in Kubernetes API server: the subset the kube engine uses, served over plain HTTP.

It keeps objects in memory with ``uid``, ``resourceVersion``, ``generation`` and
``creationTimestamp``; answers ``404``/``409``/``422`` with ``Status`` bodies shaped like the
real API server's; and checks every body it is sent against the OpenAPI models of the
``kubernetes`` package (unknown fields, missing required fields and wrong types are rejected
with ``422`` — stricter than a real server, which by default drops unknown fields with a
warning) plus the validation rules of the API server the engine could break (names, labels,
selectors matching the template, restart policies, volume references, immutable fields).
A kind or apiVersion that does not match the URL is a ``400``, as on a real server.

Controllers are simulated synchronously: creating or replacing a Deployment, DaemonSet (one
node) or Job makes its pods at once — ``Running``, labelled like the template — and deletes the
pods of an older template; deleting a workload deletes its pods. Tests change pods with
:meth:`KubeStandIn.set_pods` and inject failures with :meth:`KubeStandIn.fail`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import kubernetes.client
from aiohttp import web
from pydantic import BaseModel, ValidationError

__all__ = ["Fault", "KubeStandIn", "label_selector_matches"]

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Resource:
    group: str  # "" for the core group
    plural: str
    kind: str
    model: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


_RESOURCES: Final = {
    r.plural: r
    for r in (
        _Resource("", "configmaps", "ConfigMap", "V1ConfigMap"),
        _Resource("", "secrets", "Secret", "V1Secret"),
        _Resource("", "services", "Service", "V1Service"),
        _Resource("", "pods", "Pod", "V1Pod"),
        _Resource("apps", "deployments", "Deployment", "V1Deployment"),
        _Resource("apps", "daemonsets", "DaemonSet", "V1DaemonSet"),
        _Resource("batch", "jobs", "Job", "V1Job"),
    )
}
_NAMESPACES: Final = _Resource("", "namespaces", "Namespace", "V1Namespace")
_WORKLOADS: Final = ("deployments", "daemonsets", "jobs")
_DNS_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN: Final = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_DNS_1035: Final = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_LABEL_NAME: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DATA_KEY: Final = re.compile(r"[-._a-zA-Z0-9]+")
_PORT_NAME: Final = re.compile(r"(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class _Invalid(Exception):
    """A body breaks a rule of the API server; ``field`` and the message become a cause."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected failure: the next ``times`` ``method`` requests to ``path`` get ``status``."""

    method: str
    path: str
    status: int = 500
    times: int = 1


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` match a selector: ``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``."""
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = term.strip()
        if not term:
            continue
        if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = (
                match.group(1),
                match.group(2),
                {v.strip() for v in match.group(3).split(",")},
            )
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _serialize(model: BaseModel) -> Any:
    """The JSON a model is sent as (the client's serializer is not annotated)."""
    return kubernetes.client.ApiClient().sanitize_for_serialization(model)  # type: ignore[no-untyped-call]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_TIMESTAMP: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _without_none(value: Any) -> Any:
    """``value`` as its model serializes it: no nulls, timestamps in ``+00:00`` form."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        return value[:-1] + "+00:00"
    return value


def _status(code: int, reason: str, message: str, details: Json | None = None) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }
    return web.json_response(body, status=code)


class KubeStandIn:
    """The stand-in server; ``host`` is its URL once entered."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Json] = {}  # (plural, namespace, name) -> object
        self.namespaces: dict[str, Json] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        self.faults: list[Fault] = []
        self._fault_counts: dict[int, int] = {}
        self._versions = itertools.count(1000)
        self._ips = itertools.count(10)
        self._runner: web.AppRunner | None = None
        self.host = ""

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record_and_fail])
        for prefix in ("/api/v1", "/apis/{group}/v1"):
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}", self._collection)
            app.router.add_route("*", prefix + "/namespaces/{ns}/{plural}/{name}", self._item)
        app.router.add_route("*", "/api/v1/namespaces", self._namespace_collection)
        # Registered after the namespaced routes, which have more segments and cannot clash.
        app.router.add_route("*", "/api/v1/namespaces/{name}", self._namespace_item)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.host = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what tests use -------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig at ``path`` that points a client (the agent's kube engine) here."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "s", "cluster": {"server": self.host}}],
            "users": [{"name": "u", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "c", "context": {"cluster": "s", "user": "u"}}],
        }))  # fmt: skip
        return path

    def fail(self, method: str, path: str, *, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status`` (an ``InternalError``)."""
        self.faults.append(Fault(method.upper(), path, status, times))

    def stored(self, plural: str, namespace: str) -> dict[str, Json]:
        """The stored objects of one kind in ``namespace``, by name."""
        return {n: o for (p, ns, n), o in self.objects.items() if p == plural and ns == namespace}

    def pods(self, namespace: str, selector: str = "") -> list[Json]:
        """The pods in ``namespace`` matching ``selector``, by name."""
        found = self.stored("pods", namespace).values()
        return sorted(
            (p for p in found if label_selector_matches(selector, p["metadata"]["labels"])),
            key=lambda p: str(p["metadata"]["name"]),
        )

    def set_pods(self, namespace: str, selector: str, change: Callable[[Json], None]) -> None:
        """Apply ``change`` to every matching pod, as a kubelet would report it."""
        for pod in self.pods(namespace, selector):
            change(pod)
            self._check(_RESOURCES["pods"], pod)
            pod["metadata"]["resourceVersion"] = str(next(self._versions))

    def writes(self) -> list[tuple[str, str]]:
        """The requests that changed something (not GET)."""
        return [(m, p) for m, p in self.requests if m != "GET"]

    # --- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _record_and_fail(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        for index, fault in enumerate(self.faults):
            used = self._fault_counts.get(index, 0)
            if used < fault.times and fault.method == request.method and fault.path in request.path:
                self._fault_counts[index] = used + 1
                return _status(fault.status, "InternalError", "Internal error occurred: injected")
        response: web.StreamResponse = await handler(request)
        return response

    def _resource(self, request: web.Request) -> _Resource | None:
        resource = _RESOURCES.get(request.match_info["plural"])
        if resource is None or resource.group != request.match_info.get("group", ""):
            return None
        return resource

    async def _body(self, request: web.Request, resource: _Resource) -> Json:
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise _BadRequest(f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        if body.get("kind") != resource.kind or body.get("apiVersion") != resource.api_version:
            raise _BadRequest(
                f"the body is a {body.get('apiVersion')}/{body.get('kind')}, but the URL "
                f"is for {resource.api_version}/{resource.kind}"
            )
        return body

    def _check(self, resource: _Resource, body: Json) -> None:
        """The OpenAPI model check: nothing unknown, nothing required missing, nothing dropped."""
        model: type[BaseModel] = getattr(kubernetes.client.models, resource.model)
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise _Invalid(".".join(str(p) for p in error["loc"]), error["msg"]) from exc
        again = _serialize(parsed)
        if again != _without_none(body):
            raise _Invalid("", "the object does not survive a round trip through its model")

    # --- namespaces -----------------------------------------------------------------------------

    async def _namespace_collection(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        try:
            body = await self._body(request, _NAMESPACES)
            self._check(_NAMESPACES, body)
            name = body.get("metadata", {}).get("name", "")
            if not _DNS_1035.fullmatch(name) and not _SUBDOMAIN.fullmatch(name):
                raise _Invalid("metadata.name", "a lowercase RFC 1123 label must be given")
        except _BadRequest as exc:
            return _status(400, "BadRequest", str(exc))
        except _Invalid as exc:
            return self._invalid(_NAMESPACES, body.get("metadata", {}).get("name", ""), exc)
        if name in self.namespaces:
            return _status(409, "AlreadyExists", f'namespaces "{name}" already exists')
        stored = self._store_meta(body, None)
        stored["status"] = {"phase": "Active"}
        self.namespaces[name] = stored
        return web.json_response(stored, status=201)

    async def _namespace_item(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if request.method != "GET":
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        if name not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{name}" not found', {"name": name})
        return web.json_response(self.namespaces[name])

    # --- namespaced objects ---------------------------------------------------------------------

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource = self._resource(request)
        if resource is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        ns = request.match_info["ns"]
        if request.method == "GET":
            selector = request.query.get("labelSelector", "")
            items = [
                {k: v for k, v in copy.deepcopy(o).items() if k not in ("kind", "apiVersion")}
                for o in self.stored(resource.plural, ns).values()
                if label_selector_matches(selector, o["metadata"].get("labels", {}))
            ]
            return web.json_response(
                {
                    "kind": f"{resource.kind}List",
                    "apiVersion": resource.api_version,
                    "metadata": {"resourceVersion": str(next(self._versions))},
                    "items": items,
                }
            )
        if request.method != "POST" or resource.plural == "pods":
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        name = ""
        try:
            body = await self._body(request, resource)
            name = body.get("metadata", {}).get("name", "")
            self._validate(resource, ns, body, None)
        except _BadRequest as exc:
            return _status(400, "BadRequest", str(exc))
        except _Invalid as exc:
            return self._invalid(resource, name, exc)
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns})
        if (resource.plural, ns, name) in self.objects:
            return _status(
                409,
                "AlreadyExists",
                f'{resource.qualified} "{name}" already exists',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        stored = self._store_meta(body, None)
        stored["metadata"]["namespace"] = ns
        self._server_fields(resource, stored, None)
        self.objects[(resource.plural, ns, name)] = stored
        self._reconcile(resource, ns, stored)
        return web.json_response(stored, status=201)

    async def _item(self, request: web.Request) -> web.StreamResponse:
        resource = self._resource(request)
        if resource is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        ns, name = request.match_info["ns"], request.match_info["name"]
        key = (resource.plural, ns, name)
        current = self.objects.get(key)
        if request.method not in ("GET", "PUT", "DELETE") or (
            resource.plural == "pods" and request.method != "GET"
        ):
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        if current is None:
            return _status(
                404,
                "NotFound",
                f'{resource.qualified} "{name}" not found',
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        if request.method == "GET":
            return web.json_response(current)
        if request.method == "DELETE":
            del self.objects[key]
            if resource.plural in _WORKLOADS:
                self._delete_pods(ns, current["metadata"]["uid"])
            if resource.plural == "services":  # the API server answers with the deleted Service
                return web.json_response(current)
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": resource.group, "kind": resource.plural},
                }
            )
        try:
            body = await self._body(request, resource)
            if body.get("metadata", {}).get("name") != name:
                raise _BadRequest("the name of the object does not match the name in the URL")
            self._validate(resource, ns, body, current)
        except _BadRequest as exc:
            return _status(400, "BadRequest", str(exc))
        except _Invalid as exc:
            return self._invalid(resource, name, exc)
        wanted = body["metadata"].get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        stored = self._store_meta(body, current)
        self._server_fields(resource, stored, current)
        self.objects[key] = stored
        self._reconcile(resource, ns, stored)
        return web.json_response(stored)

    def _invalid(self, resource: _Resource, name: str, exc: _Invalid) -> web.Response:
        kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
        return _status(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {exc}',
            {
                "name": name,
                "group": resource.group,
                "kind": resource.kind,
                "causes": [
                    {"reason": "FieldValueInvalid", "message": str(exc), "field": exc.field}
                ],
            },
        )

    def _store_meta(self, body: Json, current: Json | None) -> Json:
        stored = copy.deepcopy(body)
        meta = stored.setdefault("metadata", {})
        meta.pop("generation", None)
        meta["resourceVersion"] = str(next(self._versions))
        if current is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
        else:
            for kept in ("uid", "creationTimestamp", "namespace"):
                meta[kept] = current["metadata"][kept]
        stored.pop("status", None)
        return stored

    # --- the API server's validation ------------------------------------------------------------

    def _validate(self, resource: _Resource, ns: str, body: Json, current: Json | None) -> None:
        self._check(resource, body)
        meta = body.get("metadata", {})
        name = meta.get("name", "")
        pattern = _DNS_1035 if resource.plural == "services" else _SUBDOMAIN
        if not name or len(name) > (63 if resource.plural == "services" else 253):
            raise _Invalid("metadata.name", "Required value: name or generateName is required")
        if not pattern.fullmatch(name):
            raise _Invalid("metadata.name", f"Invalid value: {name!r}: not a valid DNS name")
        if meta.get("namespace", ns) != ns:
            raise _BadRequest("the namespace of the object does not match the namespace in the URL")
        _check_labels("metadata.labels", meta.get("labels", {}))
        spec = body.get("spec", {})
        if resource.plural in ("configmaps", "secrets"):
            for key, value in body.get("data", {}).items():
                if not _DATA_KEY.fullmatch(key):
                    raise _Invalid(f"data[{key}]", "a valid config key must consist of letters")
                if resource.plural == "secrets":
                    try:
                        base64.b64decode(value, validate=True)
                    except binascii.Error as exc:
                        raise _Invalid(f"data[{key}]", "illegal base64 data") from exc
            if resource.plural == "secrets":
                _check_secret_type(body)
        elif resource.plural == "services":
            ports = spec.get("ports", [])
            if not ports:
                raise _Invalid("spec.ports", "Required value")
            for i, port in enumerate(ports):
                if len(ports) > 1 and not port.get("name"):
                    raise _Invalid(f"spec.ports[{i}].name", "Required value")
                if port.get("name") and not _PORT_NAME.fullmatch(port["name"]):
                    raise _Invalid(f"spec.ports[{i}].name", "Invalid value: not an IANA_SVC_NAME")
        elif resource.plural in _WORKLOADS:
            template = spec["template"]
            labels = template.get("metadata", {}).get("labels", {})
            _check_labels("spec.template.metadata.labels", labels)
            if resource.plural != "jobs":
                selector = spec["selector"].get("matchLabels", {})
                if not selector or any(labels.get(k) != v for k, v in selector.items()):
                    raise _Invalid(
                        "spec.template.metadata.labels",
                        "Invalid value: `selector` does not match template `labels`",
                    )
                if current is not None and current["spec"]["selector"] != spec["selector"]:
                    raise _Invalid("spec.selector", "Invalid value: field is immutable")
            elif current is not None and _job_template(current) != template:
                raise _Invalid("spec.template", "Invalid value: field is immutable")
            _check_pod(template["spec"], "spec.template.spec", job=resource.plural == "jobs")

    def _server_fields(self, resource: _Resource, stored: Json, current: Json | None) -> None:
        meta = stored["metadata"]
        if resource.plural in _WORKLOADS:
            changed = current is None or current["spec"] != stored["spec"]
            old = 0 if current is None else current["metadata"]["generation"]
            meta["generation"] = old + 1 if changed else old
        if resource.plural == "jobs":
            uid = meta["uid"]
            labels = stored["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})
            labels.update({"batch.kubernetes.io/controller-uid": uid, "job-name": meta["name"]})
            stored["spec"]["selector"] = {
                "matchLabels": {"batch.kubernetes.io/controller-uid": uid}
            }
        if resource.plural == "services":
            ip = current["spec"]["clusterIP"] if current else f"10.96.0.{next(self._ips)}"
            stored["spec"].setdefault("clusterIP", ip)
            stored["spec"]["clusterIPs"] = [stored["spec"]["clusterIP"]]

    # --- controllers ----------------------------------------------------------------------------

    def _reconcile(self, resource: _Resource, ns: str, workload: Json) -> None:
        if resource.plural not in _WORKLOADS:
            return
        spec, meta = workload["spec"], workload["metadata"]
        template = spec["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        if resource.plural == "deployments":
            count = spec.get("replicas", 1)
        elif resource.plural == "jobs":
            count = spec.get("parallelism", 1)
        else:
            count = 1
        owned = [p for p in self.stored("pods", ns).values() if _owner(p) == meta["uid"]]
        keep = [p for p in owned if p["metadata"]["annotations"]["standin/template"] == digest]
        for pod in owned:
            if pod not in keep[:count]:
                del self.objects[("pods", ns, pod["metadata"]["name"])]
        for _ in range(count - len(keep)):
            self._create_pod(resource, ns, workload, digest)
        ready = count  # every simulated pod runs at once
        if resource.plural == "deployments":
            workload["status"] = {
                "observedGeneration": meta["generation"],
                "replicas": count,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": ready,
            }
        elif resource.plural == "daemonsets":
            workload["status"] = {
                "currentNumberScheduled": 1,
                "desiredNumberScheduled": 1,
                "numberMisscheduled": 0,
                "numberReady": 1,
            }
        else:
            workload["status"] = {"active": count, "startTime": meta["creationTimestamp"]}

    def _create_pod(self, resource: _Resource, ns: str, workload: Json, digest: str) -> None:
        meta = workload["metadata"]
        labels = dict(workload["spec"]["template"].get("metadata", {}).get("labels", {}))
        if resource.plural == "deployments":
            labels["pod-template-hash"] = digest
            prefix = f"{meta['name']}-{digest}"
        else:
            prefix = meta["name"]
        name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        spec = copy.deepcopy(workload["spec"]["template"]["spec"])
        spec.setdefault("restartPolicy", "Always")
        spec["nodeName"] = "standin-node"
        started = _now()
        pod: Json = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": labels,
                "annotations": {"standin/template": digest},
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(next(self._versions)),
                "creationTimestamp": started,
                "ownerReferences": [
                    {
                        "apiVersion": resource.api_version,
                        "kind": resource.kind,
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": spec,
            "status": {
                "phase": "Running",
                "startTime": started,
                "podIP": f"10.244.0.{next(self._ips)}",
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": f"docker-pullable://{c['image']}",
                        "containerID": f"containerd://{uuid.uuid4().hex}",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": started}},
                    }
                    for c in spec["containers"]
                ],
            },
        }
        self._check(_RESOURCES["pods"], pod)
        self.objects[("pods", ns, name)] = pod

    def _delete_pods(self, ns: str, owner_uid: str) -> None:
        for pod in list(self.stored("pods", ns).values()):
            if _owner(pod) == owner_uid:
                del self.objects[("pods", ns, pod["metadata"]["name"])]


class _BadRequest(Exception):
    """The request is malformed (400), as opposed to an invalid object (422)."""


def _owner(pod: Json) -> str | None:
    owners = pod["metadata"].get("ownerReferences", [])
    return str(owners[0]["uid"]) if owners else None


def _job_template(job: Json) -> Json:
    """A stored Job's template without the labels the server added to it."""
    template = copy.deepcopy(job["spec"]["template"])
    labels = template.get("metadata", {}).get("labels", {})
    labels.pop("batch.kubernetes.io/controller-uid", None)
    labels.pop("job-name", None)
    return template  # type: ignore[no-any-return]


def _check_labels(field: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        prefix = key[: -len(name) - 1] if "/" in key else ""
        if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            raise _Invalid(f"{field}[{key}]", "Invalid value: not a qualified name")
        if prefix and not _SUBDOMAIN.fullmatch(prefix):
            raise _Invalid(f"{field}[{key}]", "Invalid value: prefix is not a DNS subdomain")
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            raise _Invalid(f"{field}[{key}]", f"Invalid value: {value!r}: not a label value")


def _check_pod(spec: Json, field: str, *, job: bool) -> None:
    policy = spec.get("restartPolicy", "Always")
    allowed = ("OnFailure", "Never") if job else ("Always",)
    if policy not in allowed:
        raise _Invalid(f"{field}.restartPolicy", f"Unsupported value: {policy!r}")
    volumes = [v["name"] for v in spec.get("volumes", [])]
    if len(set(volumes)) != len(volumes):
        raise _Invalid(f"{field}.volumes", "Duplicate value")
    names: set[str] = set()
    for i, container in enumerate(spec["containers"]):
        where = f"{field}.containers[{i}]"
        if container["name"] in names or not re.fullmatch(_DNS_LABEL, container["name"]):
            raise _Invalid(f"{where}.name", "Invalid value: not a unique DNS label")
        names.add(container["name"])
        if not container.get("image"):
            raise _Invalid(f"{where}.image", "Required value")
        for j, mount in enumerate(container.get("volumeMounts", [])):
            if mount["name"] not in volumes:
                raise _Invalid(f"{where}.volumeMounts[{j}].name", "Not found")
        for j, port in enumerate(container.get("ports", [])):
            if not 0 < port["containerPort"] < 65536:
                raise _Invalid(f"{where}.ports[{j}].containerPort", "Invalid value")
        for j, env in enumerate(container.get("env", [])):
            if not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", env["name"]):
                raise _Invalid(f"{where}.env[{j}].name", "Invalid value")


def _check_secret_type(body: dict[str, Any]) -> None:
    """The keys the API server requires of a typed Secret (pkg/apis/core/validation)."""
    data = body.get("data", {})
    kind = body.get("type", "Opaque")
    if kind == "kubernetes.io/tls":
        for key in ("tls.crt", "tls.key"):
            if key not in data:
                raise _Invalid(f"data[{key}]", "Required value")
    elif kind == "kubernetes.io/dockerconfigjson":
        if ".dockerconfigjson" not in data:
            raise _Invalid("data[.dockerconfigjson]", "Required value")
        try:
            json.loads(base64.b64decode(data[".dockerconfigjson"]))
        except ValueError as exc:
            raise _Invalid("data[.dockerconfigjson]", f"Invalid value: {exc}") from exc

"""The ``kube`` engine: runs apps as Kubernetes objects in one namespace of the node's cluster.

``apply`` renders every app (:mod:`edge.engines.manifests`), makes sure the namespace exists,
and brings the cluster to the rendered set: an object that is missing is created, one whose
content changed is replaced (a ``Job``, whose pod template Kubernetes will not change, is deleted
and created again), one that is unchanged is left alone (a hash of the rendered object rides in
an annotation, so a steady sync costs one list call per kind). Then every object labelled
``app.kubernetes.io/managed-by=pybaetyl`` that was not rendered — its app is gone, or it belongs
to an older version of the app — is deleted.

Failures, decided once:

* A transient API failure (HTTP 429 or 5xx, a refused or broken connection) is retried a few
  times with a short back-off. If it persists, ``apply`` raises :class:`KubeEngineError` before
  deleting anything, and the agent applies again at its next sync.
* A failure that belongs to one app (it cannot be rendered, the API rejects one of its objects,
  another app or a foreign object holds one of its names) does not stop the others: that app is
  reported ``Failed`` with the reason as cause, and its objects from earlier are kept running.

``status()`` is synchronous, so it answers from what the engine last read: the workloads and
pods carrying the managed-by label, re-read after every ``apply`` and every ``poll_interval``
seconds while the engine is entered. When the API cannot be read, every app is reported
``Unknown`` with the reason. Entering adopts whatever a previous agent left in the namespace;
leaving stops polling and leaves the apps running.

The ``kubernetes`` client is synchronous: every call runs in a worker thread
(:func:`asyncio.to_thread`), so the agent's event loop never blocks on the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import kubernetes.client
import kubernetes.config
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from edge.engines.base import AppSpec, AppStatus, InstanceState
from edge.engines.kubestatus import app_status, pod_status
from edge.engines.manifests import (
    LABEL_APP,
    LABEL_MANAGED_BY,
    LABEL_VERSION,
    MANAGER,
    ManifestError,
    render,
)
from edge.errors import KubeEngineError

__all__ = ["ANNOTATION_SPEC_HASH", "KubeEngine", "KubeEngineError"]

log = logging.getLogger(__name__)

ANNOTATION_SPEC_HASH: Final = "pybaetyl.io/spec-hash"
_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGER}"
_TRANSIENT_STATUS: Final = frozenset({0, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of object the engine manages, and where the client keeps its methods."""

    kind: str
    group: str  # "core", "apps" or "batch"
    method: str  # the suffix of the client's methods, e.g. "config_map"


# In the order they are created: data first, so pods find what they mount; workloads last.
_KINDS: Final = (
    _Kind("ConfigMap", "core", "config_map"),
    _Kind("Secret", "core", "secret"),
    _Kind("Service", "core", "service"),
    _Kind("Deployment", "apps", "deployment"),
    _Kind("DaemonSet", "apps", "daemon_set"),
    _Kind("Job", "batch", "job"),
)
_BY_KIND: Final = {k.kind: k for k in _KINDS}
_WORKLOADS: Final = ("Deployment", "DaemonSet", "Job")


class _AppFailed(Exception):
    """One app could not be applied; carries the cause reported in its status."""


class KubeEngine:
    """Runs apps as Kubernetes objects in ``namespace``; see the module docstring.

    Give ``api_client`` to talk to a cluster you configured (the engine does not close it), or
    ``kubeconfig`` to load one; with neither, the engine uses the in-cluster service account, or
    else the default kubeconfig (``~/.kube/config``).
    """

    def __init__(
        self,
        namespace: str = "baetyl-edge",
        *,
        api_client: kubernetes.client.ApiClient | None = None,
        kubeconfig: Path | None = None,
        poll_interval: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        request_timeout: float = 10.0,
    ) -> None:
        if api_client is not None and kubeconfig is not None:
            raise ValueError("Give either api_client or kubeconfig, not both.")
        self.namespace = namespace
        self._client = api_client
        self._owns_client = api_client is None
        self._kubeconfig = kubeconfig
        self._poll_interval = poll_interval
        self._retries = retries
        self._backoff = backoff
        self._timeout = request_timeout
        self._apis: dict[str, Any] = {}
        self._namespace_ready = False
        self._apply_lock = asyncio.Lock()
        self._observed: dict[str, AppStatus] = {}
        self._failed: dict[str, AppStatus] = {}
        self._stack = contextlib.AsyncExitStack()

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            if self._client is None:
                self._client = await asyncio.to_thread(_load_client, self._kubeconfig)
                stack.callback(self._client.close)
            client = self._client
            self._apis = {
                "core": kubernetes.client.CoreV1Api(client),
                "apps": kubernetes.client.AppsV1Api(client),
                "batch": kubernetes.client.BatchV1Api(client),
            }
            await self.refresh()  # adopt what a previous agent left running
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            poller = tasks.create_task(self._poll(), name=f"kube-engine-poll-{self.namespace}")
            stack.callback(poller.cancel)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        if self._owns_client:
            self._client = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.refresh()
            except Exception:  # a bug in reading must not stop the agent; it is logged
                log.exception("Reading the status of the apps in %s failed", self.namespace)

    # --- Engine ---------------------------------------------------------------------------------

    async def apply(self, apps: Sequence[AppSpec]) -> None:
        """Make the namespace run exactly ``apps``; see the module docstring for failures."""
        async with self._apply_lock:
            await self._ensure_namespace()
            existing = await self._list_managed()
            desired: dict[tuple[str, str], str] = {}  # (kind, name) -> app
            failed: dict[str, AppStatus] = {}
            for app in apps:
                try:
                    await self._apply_app(app, existing, desired)
                except _AppFailed as problem:
                    log.warning(
                        "App %s version %s was not applied: %s", app.name, app.version, problem
                    )
                    failed[app.name] = self._failed_status(app, str(problem))
            await self._collect_garbage(existing, desired, keep=set(failed))
            self._failed = failed
        await self.refresh()

    def status(self) -> list[AppStatus]:
        """Every app in the namespace as last read, and every app whose last apply failed."""
        merged = {**self._observed, **self._failed}
        return [merged[name] for name in sorted(merged)]

    async def refresh(self) -> None:
        """Read the managed workloads and pods again; what ``status()`` reports comes from here."""
        try:
            workloads: list[tuple[str, Any]] = []
            for kind in _WORKLOADS:
                found = await self._call(
                    self._method(kind, "list"), self.namespace, label_selector=_SELECTOR
                )
                workloads.extend((kind, obj) for obj in found.items)
            pods = (
                await self._call(
                    self._apis["core"].list_namespaced_pod, self.namespace, label_selector=_SELECTOR
                )
            ).items
        except (KubeEngineError, ApiException, ValidationError) as exc:
            cause = (
                f"The Kubernetes API cannot be read ({_reason(exc)}); this is the last status seen."
            )
            self._observed = {
                name: AppStatus(s.name, s.version, InstanceState.UNKNOWN, s.instances, cause)
                for name, s in self._observed.items()
            }
            return
        self._observed = {}
        for kind, workload in workloads:
            labels = workload.metadata.labels or {}
            name, version = labels.get(LABEL_APP), labels.get(LABEL_VERSION)
            if name is None or version is None:
                continue
            instances = tuple(
                pod_status(pod)
                for pod in sorted(pods, key=lambda p: str(p.metadata.name))
                if (pod.metadata.labels or {}).get(LABEL_APP) == name
                and (pod.metadata.labels or {}).get(LABEL_VERSION) == version
                and pod.metadata.deletion_timestamp is None
            )
            self._observed[name] = app_status(name, version, kind, workload, instances)

    # --- apply, step by step --------------------------------------------------------------------

    async def _ensure_namespace(self) -> None:
        if self._namespace_ready:
            return
        core = self._apis["core"]
        try:
            await self._call(core.read_namespace, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise self._unusable(exc, f"read the namespace {self.namespace!r}") from exc
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": self.namespace, "labels": {LABEL_MANAGED_BY: MANAGER}},
            }
            try:
                await self._call(core.create_namespace, body)
            except ApiException as exc2:
                if exc2.status != 409:
                    raise self._unusable(exc2, f"create the namespace {self.namespace!r}") from exc2
            log.info("Created the namespace %s", self.namespace)
        self._namespace_ready = True

    async def _list_managed(self) -> dict[tuple[str, str], Any]:
        existing: dict[tuple[str, str], Any] = {}
        for kind in _KINDS:
            try:
                found = await self._call(
                    self._method(kind.kind, "list"), self.namespace, label_selector=_SELECTOR
                )
            except ApiException as exc:
                raise self._unusable(exc, f"list the {kind.kind} objects") from exc
            for obj in found.items:
                existing[(kind.kind, obj.metadata.name)] = obj
        return existing

    async def _apply_app(
        self,
        app: AppSpec,
        existing: Mapping[tuple[str, str], Any],
        desired: dict[tuple[str, str], str],
    ) -> None:
        try:
            objects = render(app, namespace=self.namespace)
        except ManifestError as exc:
            raise _AppFailed(str(exc)) from exc
        keys = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
        for key in keys:
            if key in desired:
                raise _AppFailed(
                    f"Its {key[0]} {key[1]!r} has the same name as one of app {desired[key]!r}; "
                    "rename a volume or service of one of them."
                )
        for key in keys:
            desired[key] = app.name
        objects.sort(key=lambda obj: list(_BY_KIND).index(obj["kind"]))
        for obj in objects:
            _stamp(obj)
            try:
                await self._put(obj, existing.get((obj["kind"], obj["metadata"]["name"])))
            except ApiException as exc:
                if exc.status in _TRANSIENT_STATUS:
                    raise self._unusable(exc, f"apply app {app.name!r}") from exc
                raise _AppFailed(
                    f"Kubernetes refused its {obj['kind']} {obj['metadata']['name']!r}: "
                    f"{_reason(exc)}"
                ) from exc
            except ValidationError as exc:
                raise _AppFailed(
                    f"Its {obj['kind']} {obj['metadata']['name']!r} is not a valid Kubernetes "
                    f"object: {exc.errors()[0]['msg']}"
                ) from exc

    async def _put(self, obj: dict[str, Any], current: Any) -> None:
        """Create ``obj``, or replace ``current`` with it when its content changed."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        if current is None:
            try:
                await self._call(self._method(kind, "create"), self.namespace, obj)
                log.info("Created %s %s", kind, name)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            # Created meanwhile, or there all along without our label: read it and decide.
            current = await self._call(self._method(kind, "read"), name, self.namespace)
            labels = current.metadata.labels or {}
            if labels.get(LABEL_MANAGED_BY) != MANAGER:
                raise _AppFailed(
                    f"A {kind} named {name!r} already exists in namespace {self.namespace!r} "
                    "and is not managed by pybaetyl; delete or rename it."
                )
        annotations = current.metadata.annotations or {}
        if (
            annotations.get(ANNOTATION_SPEC_HASH)
            == obj["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
        ):
            return
        if kind == "Job":  # a Job's pod template cannot change: run it anew
            await self._delete(kind, name)
            await self._call(self._method(kind, "create"), self.namespace, obj)
            log.info("Recreated %s %s", kind, name)
            return
        for attempt in range(3):
            body = {**obj, "metadata": {**obj["metadata"]}}
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            try:
                await self._call(self._method(kind, "replace"), name, self.namespace, body)
                log.info("Replaced %s %s", kind, name)
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == 2:
                    raise
            current = await self._call(self._method(kind, "read"), name, self.namespace)

    async def _collect_garbage(
        self,
        existing: Mapping[tuple[str, str], Any],
        desired: Mapping[tuple[str, str], str],
        *,
        keep: set[str],
    ) -> None:
        # Workloads first, so no pod is left mounting a deleted ConfigMap.
        order = sorted(existing, key=lambda key: (key[0] not in _WORKLOADS, key))
        for key in order:
            if key in desired:
                continue
            app = (existing[key].metadata.labels or {}).get(LABEL_APP)
            if app in keep:
                continue
            try:
                await self._delete(*key)
            except ApiException as exc:
                raise self._unusable(exc, f"delete the {key[0]} {key[1]!r}") from exc
            log.info("Deleted %s %s of app %s", key[0], key[1], app)

    async def _delete(self, kind: str, name: str) -> None:
        try:
            await self._call(
                self._method(kind, "delete"),
                name,
                self.namespace,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- talking to the API ---------------------------------------------------------------------

    def _method(self, kind: str, verb: str) -> Callable[..., Any]:
        spec = _BY_KIND[kind]
        method: Callable[..., Any] = getattr(
            self._apis[spec.group], f"{verb}_namespaced_{spec.method}"
        )
        return method

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call in a thread, retrying transient failures with back-off."""
        for attempt in range(self._retries + 1):
            try:
                return await asyncio.to_thread(
                    method, *args, _request_timeout=self._timeout, **kwargs
                )
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                transient = not isinstance(exc, ApiException) or exc.status in _TRANSIENT_STATUS
                if not transient:
                    raise
                if attempt == self._retries:
                    raise self._unusable(exc, method.__name__.replace("_", " ")) from exc
                log.info("Kubernetes API call %s failed (%s); retrying", method.__name__, exc)
                await asyncio.sleep(self._backoff * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unusable(self, exc: BaseException, what: str) -> KubeEngineError:
        host = self._client.configuration.host if self._client is not None else "?"
        return KubeEngineError(
            f"The Kubernetes API at {host} did not let the engine {what} ({_reason(exc)}); "
            "check that the cluster is up and the agent's account may manage the namespace "
            f"{self.namespace!r}. The agent applies again at its next sync."
        )

    def _failed_status(self, app: AppSpec, cause: str) -> AppStatus:
        seen = self._observed.get(app.name)
        instances = seen.instances if seen is not None else ()
        return AppStatus(app.name, app.version, InstanceState.FAILED, instances, cause)


def _load_client(kubeconfig: Path | None) -> kubernetes.client.ApiClient:
    """An API client from ``kubeconfig``, else the in-cluster account, else ``~/.kube/config``."""
    # kubernetes.config is not annotated, unlike kubernetes.client: hence the ignores below.
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
        else:
            try:
                kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = str(kubeconfig) if kubeconfig is not None else "the in-cluster account or ~/.kube"
        raise KubeEngineError(
            f"No Kubernetes configuration could be loaded from {where} ({exc}); "
            "give the engine a kubeconfig file or run the agent in the cluster."
        ) from exc
    return kubernetes.client.ApiClient(configuration)


def _stamp(obj: dict[str, Any]) -> None:
    """Add the hash of the rendered object, by which an unchanged object is recognised."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
    obj["metadata"]["annotations"] = {
        **obj["metadata"].get("annotations", {}),
        ANNOTATION_SPEC_HASH: digest[:32],
    }


def _reason(exc: BaseException) -> str:
    """The message of a Kubernetes ``Status`` body, or of the exception."""
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "")["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason or ""
        return f"HTTP {exc.status}: {message}".rstrip(": ")
    if isinstance(exc, ValidationError):
        return f"an unexpected answer: {exc.errors()[0]['msg']}"
    return str(exc)

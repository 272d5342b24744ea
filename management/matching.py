"""Which apps each node should run, and pushing that to the nodes' desired state.

An app runs on the nodes of its namespace whose labels match its ``selector`` (Kubernetes label
selector syntax; every node also carries the hidden label ``baetyl-node-name=<name>``). An empty
selector matches no node: an app reaches a node only when someone said so.

A node's desired state holds references, not payloads (PROTOCOL.md)::

    {"apps": [{"name": "web", "version": "3"}, ...], "nodeprops": {...},
     "devices": [{"name", "version"}, ...], "routes": [{"name", "version"}, ...]}

``devices`` (bound to the node) and ``routes`` (whose selector matches it, as for apps) appear
only when non-empty: the desired document is replaced whole, so an absent key is an empty list,
and a node without a data plane keeps the document it had.

Every change recomputes only the nodes it affects, in one pass, and writes their desired state
through the shadow service in one batch (``write_desired_many``):

* an app created, updated or deleted: the nodes its old or new selector matches;
* a node's labels or properties changed: that node;
* a device created, updated (its credentials too) or deleted: its node;
* a route created, updated or deleted: the nodes its old or new selector matches;
* a config, secret or certificate updated: each app mounting it gets a new version in the same
  transaction as the update (``ResourceStore.update_used``), then as above; so does each app
  pulling its images with an updated registry (the app's ``registries: [{name}]``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from management.dataplane import device_answer, devices_of, route_answer
from management.selectors import Selector, SelectorError
from management.store import Kind, Resource, ResourceStore
from shadow import JSONObject, RequestError, ResourceKind
from shadow.server import DesiredWrite, ShadowService

__all__ = [
    "MOUNTED_KINDS",
    "NODE_NAME_LABEL",
    "Matcher",
    "NodeResources",
    "app_matches",
    "desired_apps",
    "mounts",
    "node_id",
    "references",
    "registries",
]

NODE_NAME_LABEL = "baetyl-node-name"
# Rechecks after a push on a shared store; each only follows a change made during the last.
_MAX_RECHECKS = 5

log = logging.getLogger(__name__)


def node_id(namespace: str, name: str) -> str:
    """The node id in certificates and topics: ``<namespace>.<name>``."""
    return f"{namespace}.{name}"


@functools.lru_cache(maxsize=4096)
def _selector(text: str) -> Selector | None:
    if not text.strip():
        return None
    try:
        return Selector.parse(text)
    except SelectorError:
        return None  # stored selectors were validated on write; never match a bad one


def _labels(node: Resource) -> dict[str, str]:
    return {**node.labels, NODE_NAME_LABEL: node.name}


def app_matches(app: Resource, node: Resource) -> bool:
    """Whether ``app`` runs on ``node`` (same namespace, selector matches its labels)."""
    selector = _selector(str(app.body.get("selector", "")))
    return (
        selector is not None and app.namespace == node.namespace and selector.matches(_labels(node))
    )


def desired_apps(node: Resource, apps: Iterable[Resource]) -> list[dict[str, str]]:
    """``[{"name", "version"}]`` of the apps running on ``node``, by name."""
    return [
        {"name": app.name, "version": str(app.version)}
        for app in sorted(apps, key=lambda a: a.name)
        if app_matches(app, node)
    ]


# The kinds a volume can mount, under the field of the volume that names one.
MOUNTED_KINDS = (Kind.CONFIG, Kind.SECRET, Kind.CERTIFICATE)


def mounts(app: Resource) -> set[tuple[Kind, str]]:
    """The (kind, name) of every config, secret and certificate the app's volumes reference."""
    found: set[tuple[Kind, str]] = set()
    for volume in app.body.get("volumes", []) or []:
        if not isinstance(volume, dict):
            continue
        for kind in MOUNTED_KINDS:
            source = volume.get(kind.value)
            if isinstance(source, dict) and isinstance(source.get("name"), str):
                found.add((kind, source["name"]))
    return found


def pulls_images(app: Resource) -> bool:
    """Whether the app is a container app, the only type that pulls images with registries."""
    return bool(app.body.get("type", "container") == "container")


def registries(app: Resource) -> set[str]:
    """The names of the registries the app pulls its images with (``registries: [{name}]``).

    Only a container app has any: the API refuses registries on a native or function app, and
    one stored before it did (or written past the API) names none here, so no node is ever
    served a registry password through it and its registries' updates do not bump it.
    """
    if not pulls_images(app):
        return set()
    return {
        entry["name"]
        for entry in app.body.get("registries", []) or []
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }


def references(app: Resource) -> set[tuple[Kind, str]]:
    """Everything the app uses: what it mounts and the registries it pulls with."""
    return mounts(app) | {(Kind.REGISTRY, name) for name in registries(app)}


def _refs(resources: Iterable[Resource]) -> list[dict[str, str]]:
    return [{"name": r.name, "version": str(r.version)} for r in sorted(resources, key=_name)]


def _name(resource: Resource) -> str:
    return resource.name


def desired_of(
    node: Resource,
    apps: Iterable[Resource],
    devices: Iterable[Resource] = (),
    routes: Iterable[Resource] = (),
) -> JSONObject:
    """The whole desired state the cloud wants on ``node``."""
    properties: Any = node.body.get("properties") or {}
    desired: JSONObject = {"apps": desired_apps(node, apps), "nodeprops": properties}
    bound = _refs(devices_of(node, devices))
    if bound:
        desired["devices"] = bound
    placed = _refs(r for r in routes if app_matches(r, node))
    if placed:
        desired["routes"] = placed
    return desired


class _DataPlane:
    """A namespace's devices and routes, read once for a push."""

    def __init__(self, devices: list[Resource], routes: list[Resource]) -> None:
        self.devices = devices
        self.routes = routes

    @classmethod
    async def read(cls, store: ResourceStore, namespace: str) -> _DataPlane:
        return cls(
            await store.list(namespace, Kind.DEVICE), await store.list(namespace, Kind.ROUTE)
        )


class Matcher:
    """Keeps nodes' desired state in line with the apps, configs and secrets of the API."""

    def __init__(self, store: ResourceStore, shadow: ShadowService) -> None:
        self.store = store
        self.shadow = shadow
        # Pushes are computed from what the store holds when they run; one at a time, so a push
        # computed from an older read can never land after a newer one.
        self._lock = asyncio.Lock()

    async def push(self, nodes: Sequence[Resource], apps: Sequence[Resource]) -> int:
        """Write the desired state of ``nodes`` in one batch; how many were written.

        The matcher owns the whole desired document, so it is replaced (a merge patch would
        keep properties and apps that were removed).
        """
        if not nodes:
            return 0
        wrote = await self._write(nodes, apps)
        if self.shadow.shared_store:
            await self._recheck(nodes, wrote)
        return len(nodes)

    async def _write(
        self, nodes: Sequence[Resource], apps: Sequence[Resource]
    ) -> dict[str, JSONObject]:
        planes = {ns: await _DataPlane.read(self.store, ns) for ns in {n.namespace for n in nodes}}
        wrote = {
            node_id(node.namespace, node.name): desired_of(
                node, apps, planes[node.namespace].devices, planes[node.namespace].routes
            )
            for node in nodes
        }
        writes = [DesiredWrite(node, desired, replace=True) for node, desired in wrote.items()]
        results = await self.shadow.write_desired_many(writes)
        failed = [r for r in results if isinstance(r, RequestError)]
        if failed:
            raise failed[0]
        return wrote

    async def _recheck(self, nodes: Sequence[Resource], wrote: dict[str, JSONObject]) -> None:
        """Other replicas push too: make sure no push computed from an older read landed last.

        The lock above serialises this replica's pushes only. After writing, the store is read
        again and the desired state recomputed; where it differs from what was written, a change
        made meanwhile (whose own push may have landed before ours) is pushed again. A change
        made after this read pushes after our write, so it lands last by itself.
        """
        for _ in range(_MAX_RECHECKS):
            namespaces = {node.namespace for node in nodes}
            stale: list[Resource] = []
            fresh_apps: dict[str, list[Resource]] = {}
            for namespace in namespaces:
                fresh_apps[namespace] = await self.store.list(namespace, Kind.APP)
                plane = await _DataPlane.read(self.store, namespace)
                fresh = {n.name: n for n in await self.store.list(namespace, Kind.NODE)}
                for node in nodes:
                    current = fresh.get(node.name) if node.namespace == namespace else None
                    if current is None:
                        continue  # deleted meanwhile: its shadow goes with it
                    key = node_id(namespace, node.name)
                    desired = desired_of(
                        current, fresh_apps[namespace], plane.devices, plane.routes
                    )
                    if desired != wrote.get(key):
                        stale.append(current)
            if not stale:
                return
            log.info("desired state of %d nodes changed while pushing; pushing again", len(stale))
            for namespace in {node.namespace for node in stale}:
                mine = [node for node in stale if node.namespace == namespace]
                wrote.update(await self._write(mine, fresh_apps[namespace]))
            nodes = stale

    async def _after_app_change(
        self, namespace: str, before: Resource | None, after: Resource | None
    ) -> int:
        """Push to the nodes the app ran on before or runs on now."""
        nodes = await self.store.list(namespace, Kind.NODE)
        apps = await self.store.list(namespace, Kind.APP)
        affected = [
            node
            for node in nodes
            if (before is not None and app_matches(before, node))
            or (after is not None and app_matches(after, node))
        ]
        return await self.push(affected, apps)

    async def _after_node_change(self, node: Resource) -> int:
        """Push the node's own desired state (its labels or properties changed)."""
        apps = await self.store.list(node.namespace, Kind.APP)
        return await self.push([node], apps)

    async def _after_mounted_change(self, namespace: str, bumped: Sequence[Resource]) -> int:
        """A config, secret, certificate or registry changed and the apps using it got new
        versions (in the same transaction, ``ResourceStore.update_used``): push to the nodes
        that run them."""
        if not bumped:
            return 0
        apps = await self.store.list(namespace, Kind.APP)
        nodes = await self.store.list(namespace, Kind.NODE)
        affected = [node for node in nodes if any(app_matches(app, node) for app in bumped)]
        return await self.push(affected, apps)

    async def after_app_change(
        self, namespace: str, before: Resource | None, after: Resource | None
    ) -> int:
        """Push to the nodes the app ran on before or runs on now."""
        async with self._lock:
            return await self._after_app_change(namespace, before, after)

    async def after_node_change(self, node: Resource) -> int:
        """Push the node's own desired state (its labels or properties changed)."""
        async with self._lock:
            fresh = await self.store.find(node.namespace, Kind.NODE, node.name)
            return await self._after_node_change(fresh or node)

    async def after_mounted_change(self, namespace: str, bumped: Sequence[Resource]) -> int:
        """A config, secret, certificate or registry changed and ``bumped`` are the apps using
        it, at their new versions: push to their nodes; how many were pushed."""
        async with self._lock:
            return await self._after_mounted_change(namespace, bumped)

    async def after_device_change(
        self, namespace: str, before: Resource | None, after: Resource | None
    ) -> int:
        """Push to the node the device was bound to, and to the one it is bound to now."""
        async with self._lock:
            names = {str(d.body.get("node")) for d in (before, after) if d is not None}
            nodes = [n for n in await self.store.list(namespace, Kind.NODE) if n.name in names]
            return await self.push(nodes, await self.store.list(namespace, Kind.APP))

    async def after_route_change(
        self, namespace: str, before: Resource | None, after: Resource | None
    ) -> int:
        """Push to the nodes the route was placed on before or is now (its selector, as apps)."""
        async with self._lock:
            nodes = [
                node
                for node in await self.store.list(namespace, Kind.NODE)
                if any(r is not None and app_matches(r, node) for r in (before, after))
            ]
            return await self.push(nodes, await self.store.list(namespace, Kind.APP))

    async def reconcile(self) -> int:
        """Bring every node's desired state in line with the stored resources; how many moved.

        A push follows the resource write that caused it, so a cloud killed between the two
        leaves nodes' desired state behind what the store says, and nothing later would notice.
        The cloud runs this in the background once its API serves: one listing per namespace,
        one read of the stored shadows, and one push of the nodes whose desired state differs.
        Shadows of deleted nodes that still hold a desired state have it emptied.
        A node's push that is refused (its desired state over the limits) is logged and left.
        """
        async with self._lock:
            moved = 0
            known: set[str] = set()
            for namespace in await self.store.namespaces():
                nodes = await self.store.list(namespace, Kind.NODE)
                known.update(node_id(namespace, n.name) for n in nodes)
                if not nodes:
                    continue
                apps = await self.store.list(namespace, Kind.APP)
                plane = await _DataPlane.read(self.store, namespace)
                # Straight from the store: at start the nodes' reconnect storm fills the service's
                # queue, and 5,000 reads behind it held the API back for 8 s.
                stored = await self.shadow.stored([node_id(namespace, n.name) for n in nodes])
                stale = [
                    node
                    for node in nodes
                    if (record := stored.get(node_id(namespace, node.name))) is None
                    or record.desired.state != desired_of(node, apps, plane.devices, plane.routes)
                ]
                if not stale:
                    continue
                log.info(
                    "%d nodes of namespace %s were behind their resources; pushing",
                    len(stale),
                    namespace,
                )
                try:
                    moved += await self.push(stale, apps)
                except RequestError as exc:
                    log.warning("reconciling namespace %s: %s", namespace, exc)
            return moved + await self._empty_orphans(known)

    async def _empty_orphans(self, known: set[str]) -> int:
        """Empty the desired state of shadows whose node is gone: a delete cut between the
        node's row and its shadow (certificates revoked first) left it; how many."""
        orphans = [i for i in await self.shadow.node_ids() if i not in known]
        stored = await self.shadow.stored(orphans) if orphans else {}
        left: list[DesiredWrite] = []
        for orphan in orphans:
            record = stored.get(orphan)
            namespace, _, name = orphan.partition(".")
            # Looked up again: a node created since the listing is not an orphan.
            if (
                record
                and record.desired.state
                and not await self.store.find(namespace, Kind.NODE, name)
            ):
                # At the version read: a node of that name created meanwhile by another replica
                # pushes a newer one, and this write then changes nothing (409).
                left.append(DesiredWrite(orphan, {}, True, version=record.desired.version))
        if left:
            log.info("%d deleted nodes still had a desired state; emptying it", len(left))
        results = await self.shadow.write_desired_many(left)
        refused = [r for r in results if isinstance(r, RequestError)]
        if refused:
            log.warning("emptying the desired state of %d deleted nodes: %s", len(refused),
                        refused[0])  # fmt: skip
        return len(left) - len(refused)

    async def users_of(self, namespace: str, kind: Kind, name: str) -> list[str]:
        """Names of the apps that mount this config, secret or certificate or use this registry."""
        apps = await self.store.list(namespace, Kind.APP)
        return [app.name for app in apps if (kind, name) in references(app)]


class NodeResources:
    """What a node may fetch with ``resource/get``: only what its desired state leads to.

    A device must be bound to the node, a route placed on it (its selector matches), each at the
    version asked for. An app must run on the node (its selector matches) and be at the version
    asked for; a config, secret or certificate must be mounted by such an app, a registry named
    in its ``registries``. Anything else is "not found" (404) — a node cannot learn what exists
    beyond its own apps and devices, in its own namespace. Secret values (a secret's data, a
    registry's password, a certificate's key) are decrypted only here, for the node that may
    have them.
    """

    def __init__(self, store: ResourceStore, secrets: Any) -> None:
        self.store = store
        self.secrets = secrets  # a SecretBox (typed loosely: the API module imports this one)

    async def resource(
        self, node_id: str, kind: ResourceKind, name: str, version: str
    ) -> JSONObject | None:
        namespace, _, node_name = node_id.partition(".")
        node = await self.store.find(namespace, Kind.NODE, node_name)
        if node is None:
            return None
        if kind is ResourceKind.DEVICE:
            device = await self.store.find(namespace, Kind.DEVICE, name)
            if device is None or device.body.get("node") != node_name:
                return None  # another node's device is not found, as if it did not exist
            return device_answer(device) if str(device.version) == version else None
        if kind is ResourceKind.ROUTE:
            route = await self.store.find(namespace, Kind.ROUTE, name)
            if route is None or not app_matches(route, node) or str(route.version) != version:
                return None
            return route_answer(route)
        apps = [a for a in await self.store.list(namespace, Kind.APP) if app_matches(a, node)]
        if kind is ResourceKind.APP:
            app = next((a for a in apps if a.name == name), None)
            if app is None or str(app.version) != version:
                return None
            return await self._app_spec(app)
        wanted = Kind(kind.value)
        if not any((wanted, name) in references(app) for app in apps):
            return None
        found = await self.store.find(namespace, wanted, name)
        if found is None or str(found.version) != version:
            return None
        from management.api.views import node_data  # api imports this module

        return {"data": node_data(found, self.secrets)}

    async def _app_spec(self, app: Resource) -> JSONObject:
        """The app as the node runs it, each volume naming the version of what it mounts and each
        registry its version."""
        spec = {k: v for k, v in app.body.items() if k != "description"}
        volumes = []
        for volume in spec.get("volumes", []) or []:
            volume = dict(volume)
            for kind in MOUNTED_KINDS:
                source = volume.get(kind.value)
                if isinstance(source, dict):
                    volume[kind.value] = await self._versioned(app, kind, source)
            volumes.append(volume)
        spec["volumes"] = volumes
        if not pulls_images(app):
            spec.pop("registries", None)  # see registries(): a non-container app has none
        elif spec.get("registries"):
            spec["registries"] = [
                await self._versioned(app, Kind.REGISTRY, entry) for entry in spec["registries"]
            ]
        return spec

    async def _versioned(self, app: Resource, kind: Kind, ref: dict[str, Any]) -> dict[str, Any]:
        """``ref`` with the version of what it names (empty if it is gone)."""
        found = await self.store.find(app.namespace, kind, str(ref.get("name")))
        return {**ref, "version": "" if found is None else str(found.version)}

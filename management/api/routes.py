"""The ``/v1`` routes: nodes, apps, configs, secrets, registries, certificates, devices, routes
(the routes under one node beyond its CRUD are in ``nodes.py``, a device's credentials in
``devices.py``).

Writes validate the body against its schema (``schemas.py``), then check what a schema cannot
(label syntax, selectors, references between resources), store, and push the change to the
affected nodes' desired state through the matcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography import x509

from certs import Identity, Status
from management.api.app import CONTEXT, NAMESPACE, ApiContext, json_body
from management.api.views import (
    CERTIFICATES,
    INSTALL_GENERATION,
    PASSWORD_HASH,
    stored_body,
    view,
)
from management.dataplane import check_device_topics, check_route, devices_of, routes_using
from management.errors import BadRequest, Conflict, Unprocessable
from management.matching import (
    MOUNTED_KINDS,
    desired_apps,
    mounts,
    node_id,
    references,
    registries,
)
from management.schemas import ValidationFailed, validate
from management.selectors import Selector, SelectorError, validate_labels
from management.store import Kind, Resource, ResourceConflict
from shadow import Limits, RequestError
from shadow import validate as validate_section
from shadow.server import ShadowRecord

__all__ = ["COLLECTIONS", "SYSTEM_APP_PREFIX", "add_routes", "revoke_device"]

log = logging.getLogger(__name__)

# URL collection -> (kind, write schema)
COLLECTIONS: dict[str, tuple[Kind, str]] = {
    "nodes": (Kind.NODE, "NodeWrite"),
    "apps": (Kind.APP, "AppWrite"),
    "configs": (Kind.CONFIG, "ConfigWrite"),
    "secrets": (Kind.SECRET, "SecretWrite"),
    "registries": (Kind.REGISTRY, "RegistryWrite"),
    "certificates": (Kind.CERTIFICATE, "CertificateWrite"),
    "devices": (Kind.DEVICE, "DeviceWrite"),
    "routes": (Kind.ROUTE, "RouteWrite"),
}
# User apps may not take the names of the system apps an agent runs beside them (baetyl-broker).
SYSTEM_APP_PREFIX = "baetyl-"
MAX_PAGE_SIZE = 200
_MAX_RACE_ATTEMPTS = 5  # conditional writes read again after a conflict at most this often
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a label key shown as labels.<key>
# The kinds apps use: an update bumps the apps using one, a delete is refused while one does.
_USED_KINDS = (*MOUNTED_KINDS, Kind.REGISTRY)


def _ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


def _ns(request: web.Request) -> str:
    namespace: str = request[NAMESPACE]
    return namespace


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}.", field=name)
    return value


def _expected_version(request: web.Request) -> int | None:
    """The version named by ``If-Match`` (the ``version`` of a read), if any."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    text = header.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()):  # int() takes "²"-like digits: refuse them
        raise BadRequest('If-Match must be the resource\'s version, e.g. If-Match: "3".')
    return int(text)


# -- checks a schema cannot make -------------------------------------------------------------------


def _check_labels(labels: dict[str, str]) -> None:
    """Each label against the Kubernetes syntax; a 400 names the label at fault."""
    for key, value in labels.items():
        field = f"labels.{key}" if _IDENTIFIER.fullmatch(key) else f"labels[{json.dumps(key)}]"
        try:
            validate_labels({key: value}, field="labels")
        except SelectorError as exc:
            raise ValidationFailed(field, str(exc).rstrip(".") + ".") from None
    validate_labels(labels, field="labels")  # the limit on their number


def _check_properties(ctx: ApiContext, properties: Any, field: str) -> None:
    """Desired node properties must fit the node's desired state, checked before anything is
    stored (a write stored and then refused by the shadow would be answered 400 yet kept)."""
    limits = ctx.shadow.limits
    # Leave room for the apps list beside them in the desired document.
    room = Limits(max_bytes=limits.max_bytes // 2, max_depth=limits.max_depth - 1,
                  max_key_length=limits.max_key_length)  # fmt: skip
    try:
        validate_section(properties or {}, room, path=field)
    except RequestError as exc:
        raise BadRequest(exc.message, field=field) from None


async def _check(ctx: ApiContext, namespace: str, kind: Kind, body: dict[str, Any]) -> None:
    _check_labels(body.get("labels") or {})
    if kind is Kind.NODE:
        _check_properties(ctx, body.get("properties"), "properties")
    if kind is Kind.APP and str(body["name"]).startswith(SYSTEM_APP_PREFIX):
        raise Unprocessable(
            f"name {body['name']!r}: names starting with {SYSTEM_APP_PREFIX!r} are reserved for "
            "the system apps the agent runs (baetyl-broker); choose another name.",
            field="name",
        )
    if kind is Kind.DEVICE:
        if await ctx.store.find(namespace, Kind.NODE, str(body["node"])) is None:
            raise Unprocessable(
                f"node: there is no node named {body['node']!r} in this namespace; create it "
                "first, or name an existing node.",
                field="node",
            )
        body["topics"] = check_device_topics(body.get("topics"))
    if kind is Kind.ROUTE:
        Selector.parse(str(body.get("selector", "")))
        check_route(body, await ctx.store.list(namespace, Kind.APP))
    if kind is Kind.APP:
        text = str(body.get("selector", ""))
        Selector.parse(text)  # SelectorError -> 400 naming the position
        for index, volume in enumerate(body.get("volumes") or []):
            for source in MOUNTED_KINDS:
                ref = volume.get(source.value)
                if (
                    isinstance(ref, dict)
                    and await ctx.store.find(namespace, source, str(ref.get("name"))) is None
                ):
                    raise BadRequest(
                        f"volumes[{index}].{source.value}.name: there is no {source} named "
                        f"{ref.get('name')!r}; create it first.",
                        field=f"volumes[{index}].{source.value}.name",
                    )
        await _check_registries(ctx, namespace, body.get("registries") or [])
        if body.get("type") == "function":
            _check_function_code(body)
    if kind is Kind.REGISTRY:
        await _check_address_of_used(ctx, namespace, str(body["name"]), str(body["address"]))


async def _check_registries(ctx: ApiContext, namespace: str, entries: list[Any]) -> None:
    """An app's registries must exist and differ in address: the image pull secret keeps one
    login per address (``.dockerconfigjson``'s ``auths``), so a second would silently replace
    the first."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        name, field = str(entry.get("name")), f"registries[{index}].name"
        found = await ctx.store.find(namespace, Kind.REGISTRY, name)
        if found is None:
            raise BadRequest(
                f"{field}: there is no registry named {name!r}; create it first.", field=field
            )
        address = str(found.body.get("address", ""))
        if address in seen:
            raise BadRequest(
                f"{field}: the registry {name!r} has the address {address!r}, as "
                f"registries[{seen[address]}] has; an image pull secret holds one login per "
                "address, so name only one of them.",
                field=field,
            )
        seen[address] = index


async def _check_address_of_used(ctx: ApiContext, namespace: str, name: str, address: str) -> None:
    """A registry's new address must not be that of another registry an app using it names
    (``_check_registries`` from the other side)."""
    for app in await ctx.store.list(namespace, Kind.APP):
        others = registries(app)
        if name not in others:
            continue
        for other in sorted(others - {name}):
            found = await ctx.store.find(namespace, Kind.REGISTRY, other)
            if found is not None and str(found.body.get("address", "")) == address:
                raise BadRequest(
                    f"address: the app {app.name!r} pulls with this registry and with the "
                    f"registry {other!r}, which has the address {address!r} already; an image "
                    "pull secret holds one login per address: give another address, or remove "
                    f"one of them from the app's registries first.",
                    field="address",
                )


def _check_function_code(app: dict[str, Any]) -> None:
    """Each handler's code must be in a config volume of the app, as the node's engine finds it
    (edge/engines/plan.py): the config its ``codeConfig`` names (by config name, else by volume
    name), or, without one, any config volume. Otherwise the app is stored, and the node shows
    it failed and answers its calls 404, with the reason only in the node's stats."""
    volumes = [v for v in app.get("volumes") or [] if isinstance(v.get("config"), dict)]
    held = {str(v["config"].get("name")) for v in volumes} | {str(v.get("name")) for v in volumes}
    for i, service in enumerate(app.get("services") or []):
        for j, handler in enumerate(service.get("handlers") or []):
            function, config = handler.get("name"), handler.get("codeConfig")
            field = f"services[{i}].handlers[{j}].codeConfig"
            if config is not None and str(config) not in held:
                raise Unprocessable(
                    f"{field}: the function {function!r} takes its code from the config "
                    f"{config!r}, which no volume of the app mounts, so the node could not run "
                    f'it; add {{"name": "code", "config": {{"name": "{config}"}}}} to volumes.',
                    field=field,
                )
            if config is None and not volumes:
                raise Unprocessable(
                    f"{field}: the function {function!r} names no codeConfig and the app mounts "
                    "no config, so the node would find no code for it; put its module in a "
                    'config, mount it (volumes: [{"name": "code", "config": {"name": '
                    '"<config>"}}]) and name it in codeConfig.',
                    field=field,
                )


# -- generic collection handlers -------------------------------------------------------------------


def _list_handler(kind: Kind) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        selector = Selector.parse(request.query.get("selector", ""))
        name_part = request.query.get("name", "")
        items = [
            r
            for r in await ctx.store.list(_ns(request), kind)
            if name_part in r.name and (selector.is_empty() or selector.matches(r.labels))
        ]
        return await _page(request, items)

    return handle


async def _page(request: web.Request, items: list[Resource]) -> web.Response:
    """The ``pageNo``/``pageSize`` page of ``items``, as ``{total, pageNo, pageSize, items}``."""
    page_no = _int_param(request, "pageNo", 1, 1, 1_000_000)
    page_size = _int_param(request, "pageSize", 20, 1, MAX_PAGE_SIZE)
    page = items[(page_no - 1) * page_size : page_no * page_size]
    ctx = _ctx(request)
    if page and page[0].kind is Kind.NODE:
        # One shadow batch and one app listing for the page, not one of each per node.
        records = await asyncio.gather(
            *(ctx.shadow.get(node_id(r.namespace, r.name)) for r in page)
        )
        apps = await ctx.store.list(page[0].namespace, Kind.APP)
        views = [
            _node_view(ctx, r, record, apps, full=False)
            for r, record in zip(page, records, strict=True)
        ]
    else:
        views = [await _view(ctx, r, full=False) for r in page]
    return web.json_response(
        {"total": len(items), "pageNo": page_no, "pageSize": page_size, "items": views}
    )


async def _view(ctx: ApiContext, resource: Resource, *, full: bool = True) -> dict[str, Any]:
    if resource.kind is Kind.NODE:
        record = await ctx.shadow.get(node_id(resource.namespace, resource.name))
        apps = await ctx.store.list(resource.namespace, Kind.APP)
        return _node_view(ctx, resource, record, apps, full=full)
    out = view(resource, box=ctx.secrets if full else None, full=full)
    if resource.kind is Kind.DEVICE:
        out.update(await _presence(ctx, resource))
    return out


async def _presence(ctx: ApiContext, device: Resource) -> dict[str, Any]:
    """``online`` and ``since`` of a device, as its node last reported them (``devices``)."""
    record = await ctx.shadow.get(node_id(device.namespace, str(device.body.get("node"))))
    reported = record.reported.state.get("devices")
    entry = reported.get(device.name) if isinstance(reported, dict) else None
    entry = entry if isinstance(entry, dict) else {}
    since = entry.get("since")
    return {
        "online": entry.get("online") is True,
        "since": since if isinstance(since, int | float) and not isinstance(since, bool) else None,
    }


def _node_view(
    ctx: ApiContext,
    node: Resource,
    record: ShadowRecord,
    apps: list[Resource],
    *,
    full: bool,
) -> dict[str, Any]:
    out = view(node, box=ctx.secrets if full else None, full=full)
    out["online"] = record.online
    out["lastSeen"] = (
        None
        if record.last_seen is None
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.last_seen / 1000))
    )
    out["report"] = record.reported.state
    out["desire"] = record.desired.state
    out["apps"] = desired_apps(node, apps)
    return out


def _create_handler(kind: Kind, schema: str) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        body = validate(schema, await json_body(request))
        await _check(ctx, _ns(request), kind, body)
        created = await ctx.store.create(stored_body(kind, _ns(request), body, ctx.secrets))
        await _after_write(ctx, None, created)
        return web.json_response(await _view(ctx, created), status=201)

    return handle


def _get_handler(kind: Kind) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        resource = await ctx.store.get(_ns(request), kind, request.match_info["name"])
        return web.json_response(await _view(ctx, resource))

    return handle


def _update_handler(kind: Kind, schema: str) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        name = request.match_info["name"]
        raw = await json_body(request)
        raw.setdefault("name", name)
        body = validate(schema, raw)
        if body["name"] != name:
            raise BadRequest(
                f"name {body['name']!r} differs from {name!r} in the URL; names cannot change.",
                field="name",
            )
        await _check(ctx, _ns(request), kind, body)
        before = await ctx.store.get(_ns(request), kind, name)
        resource = stored_body(kind, _ns(request), body, ctx.secrets)
        if kind is Kind.REGISTRY and "password" not in body and "password" in before.body:
            # Write-only, so a client cannot send it back: a PUT without one keeps the stored one.
            resource.body["password"] = before.body["password"]
        if kind is Kind.DEVICE:
            if body["node"] != before.body.get("node"):
                raise Unprocessable(
                    f"node: the device {name!r} is bound to the node {before.body.get('node')!r} "
                    "(its certificates name it); delete the device and create it on the other "
                    "node.",
                    field="node",
                )
            for kept in (PASSWORD_HASH, CERTIFICATES):  # set by their own routes only
                if kept in before.body:
                    resource.body[kept] = before.body[kept]
        if kind in _USED_KINDS:
            # Its users get new versions in the same transaction: a crash cannot split them.
            updated, bumped = await ctx.store.update_used(
                resource,
                expected_version=_expected_version(request),
                users=lambda app: (kind, name) in references(app),
            )
            await ctx.matcher.after_mounted_change(updated.namespace, bumped)
        elif kind is Kind.NODE:
            before, updated = await _write_node(
                ctx, before, lambda _current: resource, _expected_version(request)
            )
            await _after_write(ctx, before, updated)
        else:
            updated = await ctx.store.update(resource, expected_version=_expected_version(request))
            await _after_write(ctx, before, updated)
        return web.json_response(await _view(ctx, updated))

    return handle


async def _write_node(
    ctx: ApiContext,
    before: Resource,
    change: Callable[[Resource], Resource],
    expected: int | None,
) -> tuple[Resource, Resource]:
    """Write ``change(current)`` over a node, keeping what the server keeps in its body (its
    install commands' generation); ``(current, updated)``. Conditional on the version read, so a
    revocation committed meanwhile is never written over: read again and retried, unless the
    client named the version itself (409 then, as for any other write)."""
    current = before
    for _ in range(_MAX_RACE_ATTEMPTS):
        resource = change(current)
        resource.body.pop(INSTALL_GENERATION, None)
        if INSTALL_GENERATION in current.body:
            resource.body[INSTALL_GENERATION] = current.body[INSTALL_GENERATION]
        try:
            version = expected if expected is not None else current.version
            return current, await ctx.store.update(resource, expected_version=version)
        except ResourceConflict:
            if expected is not None:
                raise
            current = await ctx.store.get(current.namespace, Kind.NODE, current.name)
    raise Conflict(f"The node {current.name!r} kept changing while it was written; retry.")


def _delete_handler(kind: Kind) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        name = request.match_info["name"]
        namespace = _ns(request)
        if kind in _USED_KINDS:
            users = await ctx.matcher.users_of(namespace, kind, name)
            if users:
                where = "registries" if kind is Kind.REGISTRY else "volumes"
                raise Conflict(
                    f"The {kind} {name!r} is used by app(s) {', '.join(users)}; remove it "
                    f"from their {where} first."
                )
        if kind is Kind.NODE:
            bound = devices_of(
                await ctx.store.get(namespace, kind, name),
                await ctx.store.list(namespace, Kind.DEVICE),
            )
            if bound:
                raise Conflict(
                    f"The node {name!r} has device(s) {', '.join(d.name for d in bound)}; delete "
                    "them first ('baetyl device delete NAME')."
                )
        if kind is Kind.APP:
            users = routes_using(name, await ctx.store.list(namespace, Kind.ROUTE))
            if users:
                raise Conflict(
                    f"The app {name!r} is the function of route(s) {', '.join(users)}; change "
                    "or delete them first."
                )
        if kind is Kind.DEVICE:
            # Revoked before the row goes, as for nodes: a crash in between leaves a device that
            # cannot connect with a certificate (delete it again), never a deleted one that can.
            await revoke_device(ctx, await ctx.store.get(namespace, kind, name))
        if kind is Kind.NODE:
            # Its certificates are revoked before its row goes: a cloud killed in between leaves
            # a node that can no longer connect (delete it again), never a deleted node that
            # still can. _forget_node revokes again, for a certificate issued meanwhile.
            await _revoke_node(ctx, await ctx.store.get(namespace, kind, name))
        deleted = await ctx.store.delete(namespace, kind, name)
        await _after_write(ctx, deleted, None)
        return web.Response(status=204)

    return handle


async def _after_write(ctx: ApiContext, before: Resource | None, after: Resource | None) -> None:
    """Push what the write changes to the nodes it affects."""
    resource = after or before
    assert resource is not None
    if resource.kind is Kind.APP:
        await ctx.matcher.after_app_change(resource.namespace, before, after)
    elif resource.kind is Kind.DEVICE:
        await ctx.matcher.after_device_change(resource.namespace, before, after)
    elif resource.kind is Kind.ROUTE:
        await ctx.matcher.after_route_change(resource.namespace, before, after)
    elif resource.kind is Kind.NODE:
        if after is not None:
            await ctx.matcher.after_node_change(after)
        else:
            await _forget_node(ctx, resource)
    # A config, secret, registry or certificate update bumps its users with it (the update
    # handler); creating or deleting one changes no app (one in use cannot be deleted).


async def _revoke_node(ctx: ApiContext, node: Resource) -> None:
    """Revoke every valid certificate of the node (the broker closes its connection)."""
    identity = Identity.node(node.namespace, node.name)

    def revoke_all() -> None:  # file I/O under the CA's lock: off the event loop
        for record in ctx.ca.records():
            if record.identity == identity and record.status is Status.VALID:
                ctx.ca.revoke(record.serial)

    await asyncio.to_thread(revoke_all)


async def revoke_device(ctx: ApiContext, device: Resource) -> None:
    """Revoke every valid certificate the device CA issued for the device (any serial it holds,
    listed or not: one issued by a request that crashed before listing it too)."""
    ca = ctx.devices_ca
    identity = Identity.device(device.namespace, str(device.body.get("node")), device.name)

    def revoke_all() -> None:  # file I/O under the CA's lock: off the event loop
        for record in ca.records():
            if record.identity == identity and record.status is Status.VALID:
                ca.revoke(record.serial, x509.ReasonFlags.cessation_of_operation)

    await asyncio.to_thread(revoke_all)


async def _forget_node(ctx: ApiContext, node: Resource) -> None:
    """A deleted node: its certificates revoked (its connection closes), its desired emptied."""
    await _revoke_node(ctx, node)
    await ctx.shadow.replace_desired(node_id(node.namespace, node.name), {})


async def config_users(request: web.Request) -> web.Response:
    """The apps mounting a config (or secret), a page of them like any list."""
    ctx = _ctx(request)
    kind = Kind.CONFIG if request.path.startswith("/v1/configs/") else Kind.SECRET
    name = request.match_info["name"]
    await ctx.store.get(_ns(request), kind, name)
    apps = await ctx.store.list(_ns(request), Kind.APP)
    return await _page(request, [app for app in apps if (kind, name) in mounts(app)])


async def app_mounts(request: web.Request) -> web.Response:
    """The configs (or secrets) an app mounts, a page of them like any list."""
    ctx = _ctx(request)
    kind = Kind.CONFIG if request.path.endswith("/configs") else Kind.SECRET
    app = await ctx.store.get(_ns(request), Kind.APP, request.match_info["name"])
    names = sorted(name for mounted, name in mounts(app) if mounted is kind)
    found = [await ctx.store.find(app.namespace, kind, name) for name in names]
    return await _page(request, [r for r in found if r is not None])


async def namespace(request: web.Request) -> web.Response:
    """The namespace of the caller's token."""
    return web.json_response({"name": _ns(request)})


def add_routes(app: web.Application) -> None:
    for collection, (kind, schema) in COLLECTIONS.items():
        base = f"/v1/{collection}"
        app.router.add_get(base, _list_handler(kind))
        app.router.add_post(base, _create_handler(kind, schema))
        app.router.add_get(base + "/{name}", _get_handler(kind))
        app.router.add_put(base + "/{name}", _update_handler(kind, schema))
        app.router.add_delete(base + "/{name}", _delete_handler(kind))
    app.router.add_get("/v1/configs/{name}/apps", config_users)
    app.router.add_get("/v1/secrets/{name}/apps", config_users)
    app.router.add_get("/v1/apps/{name}/configs", app_mounts)
    app.router.add_get("/v1/apps/{name}/secrets", app_mounts)
    app.router.add_get("/v1/namespace", namespace)

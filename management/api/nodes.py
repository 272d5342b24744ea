"""The ``/v1/nodes/{name}/...`` routes beyond a node's own CRUD: the apps it should run, what
it reports, its desired properties, its install command and the revocation of those commands.

They share the helpers of ``routes.py`` (the collections' CRUD); ``create_app`` registers both.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes

from management.api.app import json_body
from management.api.routes import (
    _MAX_RACE_ATTEMPTS,
    _check_properties,
    _ctx,
    _expected_version,
    _ns,
    _view,
    _write_node,
)
from management.api.views import INSTALL_GENERATION
from management.errors import BadRequest, Conflict
from management.matching import app_matches, node_id
from management.schemas import COMPONENTS
from management.store import Kind, Resource, ResourceConflict
from management.tokens import ActivationClaims, ActivationKind

__all__ = ["add_routes"]

log = logging.getLogger(__name__)

_MAX_PROPERTIES: int = COMPONENTS["NodeWrite"]["properties"]["properties"]["maxProperties"]


async def node_apps(request: web.Request) -> web.Response:
    """The apps the node should run, with what it reports about them."""
    ctx = _ctx(request)
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])
    apps = [a for a in await ctx.store.list(node.namespace, Kind.APP) if app_matches(a, node)]
    record = await ctx.shadow.get(node_id(node.namespace, node.name))
    stats = {s.get("name"): s for s in record.reported.state.get("appstats", []) or []
             if isinstance(s, dict)}  # fmt: skip
    items = [{**await _view(ctx, app, full=False), "status": stats.get(app.name)} for app in apps]
    return web.json_response({"total": len(items), "items": items})


async def node_stats(request: web.Request) -> web.Response:
    """What the node last reported about itself: node info, stats, app stats, its routes' counts
    and its devices' presence."""
    ctx = _ctx(request)
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])
    record = await ctx.shadow.get(node_id(node.namespace, node.name))
    reported = record.reported.state
    return web.json_response(
        {
            "online": record.online,
            "node": reported.get("node", {}),
            "nodestats": reported.get("nodestats", {}),
            "appstats": reported.get("appstats", []),
            # The node data plane: per route forwarded/queued/dropped/failed/lastError, and the
            # presence of its devices (DATA plane sections of the reported state).
            "routes": _with_nulls(reported.get("routes", {}), "lastError"),
            "devices": _with_nulls(reported.get("devices", {}), "since"),
        }
    )


def _with_nulls(section: Any, key: str) -> Any:
    """``section``'s entries with ``key`` null where the node sent null: a report is a merge
    patch (RFC 7386), in which null removes the key, so "no error"/"never seen" arrive as an
    absent key; the API shows them as documented (``lastError: null``, ``since: null``)."""
    if not isinstance(section, dict):
        return section
    return {
        name: {key: None, **entry} if isinstance(entry, dict) else entry
        for name, entry in section.items()
    }


async def node_properties(request: web.Request) -> web.Response:
    """Desired node properties (ours), reported ones (the node's), and the desired ones the
    agent refused to apply, each with its cause."""
    ctx = _ctx(request)
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])
    record = await ctx.shadow.get(node_id(node.namespace, node.name))
    reported = record.reported.state
    return web.json_response(
        {
            "desire": node.body.get("properties") or {},
            "report": reported.get("nodeprops", {}),
            "refused": reported.get("nodepropsRefused", {}),
        }
    )


async def put_node_properties(request: web.Request) -> web.Response:
    """Replace the desired node properties: ``{"desire": {...}}``."""
    ctx = _ctx(request)
    body = await json_body(request)
    desire = body.get("desire")
    if set(body) != {"desire"} or not isinstance(desire, dict):
        raise BadRequest('The body must be {"desire": {<property>: <value>, ...}}.', field="desire")
    _check_properties(_ctx(request), desire, "desire")
    if len(desire) > _MAX_PROPERTIES:
        raise BadRequest(
            f"desire has {len(desire)} properties but at most {_MAX_PROPERTIES} are allowed; "
            "remove some.",
            field="desire",
        )
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])
    _, updated = await _write_node(
        ctx,
        node,
        lambda current: Resource(current.namespace, Kind.NODE, current.name,
                                 labels=current.labels,
                                 body={**current.body, "properties": desire}),
        _expected_version(request),
    )  # fmt: skip
    await ctx.matcher.after_node_change(updated)
    return await node_properties(request)


async def node_init(request: web.Request) -> web.Response:
    """The one-line install command with a signed, expiring, single-use activation token."""
    ctx = _ctx(request)
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])
    now = int(time.time())
    claims = ActivationClaims.new(
        ActivationKind.NODE, node.namespace, node.name, now=now, lifetime=ctx.install_token_ttl,
        generation=int(node.body.get(INSTALL_GENERATION, 0)),
    )  # fmt: skip
    token = ctx.signer.sign(claims)
    fingerprint = ctx.ca.certificate.fingerprint(hashes.SHA256()).hex()
    url = f"https://{ctx.public_host}:{ctx.activation_port}"
    cmd = f"baetyl edge activate --url {url} --ca-sha256 {fingerprint} --token {token}"
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claims.expires_at))
    return web.json_response({"cmd": cmd, "token": token, "expiresAt": expires})


async def revoke_node_init(request: web.Request) -> web.Response:
    """Revoke every install command issued for the node so far (a leaked one, say); the node's
    certificates and the commands issued after are not touched."""
    ctx = _ctx(request)
    node = await ctx.store.get(_ns(request), Kind.NODE, request.match_info["name"])

    def next_generation(current: Resource) -> Resource:
        generation = int(current.body.get(INSTALL_GENERATION, 0)) + 1
        return Resource(current.namespace, Kind.NODE, current.name, labels=current.labels,
                        body={**current.body, INSTALL_GENERATION: generation})  # fmt: skip

    # Not through _write_node, which keeps the stored generation: this write moves it on.
    for _ in range(_MAX_RACE_ATTEMPTS):
        try:
            await ctx.store.update(next_generation(node), expected_version=node.version)
        except ResourceConflict:
            node = await ctx.store.get(node.namespace, Kind.NODE, node.name)
            continue
        log.info("revoked the install commands of node %s/%s", node.namespace, node.name)
        return web.Response(status=204)
    raise Conflict(f"The node {node.name!r} kept changing; revoke its install commands again.")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/nodes/{name}/apps", node_apps)
    app.router.add_get("/v1/nodes/{name}/stats", node_stats)
    app.router.add_get("/v1/nodes/{name}/properties", node_properties)
    app.router.add_put("/v1/nodes/{name}/properties", put_node_properties)
    app.router.add_get("/v1/nodes/{name}/init", node_init)
    app.router.add_delete("/v1/nodes/{name}/init", revoke_node_init)

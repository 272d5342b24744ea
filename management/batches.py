"""Batch provisioning: many devices activate with one batch secret and their own fingerprint.

An operator makes a batch (a quota, an optional whitelist of fingerprints, labels) and bakes its
secret into the devices' image; each device then activates itself, named after its fingerprint
(serial number, host name, machine id or typed input), with no per-device install command.

Admin API (``/v1``, bearer token, scoped to the token's namespace; in the OpenAPI document)::

    POST   /v1/batches          BatchWrite -> 201 BatchCreated: the batch and its `secret`,
                                shown only here (the store keeps its SHA-256)
    GET    /v1/batches          {total, pageNo, pageSize, items: [Batch]}, without the records
    GET    /v1/batches/{name}   Batch with `activated` and `activations` [{fingerprint, node,
                                time, ip}]
    DELETE /v1/batches/{name}   204; the nodes the batch made stay (delete them to revoke)

Activation endpoint (the HTTPS activation app of ``activation.py``, no bearer token; not part of
the ``/v1`` OpenAPI document)::

    POST /v1/activate/batch  {namespace, batch, fingerprint, secret, csr}
      -> 201 {certificate, ca, broker: {host, port}, nodeId}      (as POST /v1/activate)

The device becomes node ``<batch>-<first 10 hex digits of sha256(fingerprint)>`` (always a
DNS label: batch names have at most 52 characters), labelled with the batch's labels and
``baetyl-batch=<batch>``; its desired state is pushed and its certificate names that node,
whatever the CSR's subject says. Checked in this order, refused with ``{code, message,
requestId}``:

* 400 ``ValidationFailed``: the body (a fingerprint is 1 to 253 printable characters);
* 404 ``NotFound``: no such batch in that namespace (a batch is usable only in its own);
* 401 ``Unauthorized``: the secret is wrong (compared in constant time);
* 403 ``Forbidden``: the batch has a whitelist and the fingerprint is not on it;
* 400 ``BadRequest`` (``field: csr``): the CSR is unreadable, weak or names someone else;
* 409 ``Conflict``: a node not made by this batch already has the derived name;
* 403 ``QuotaExhausted``: the batch's quota of devices is used up. 403, not 409: the request
  is understood and authenticated but the batch will not take it, and retrying cannot help
  until an operator makes a new batch.

Re-activating a fingerprint already recorded is safe and free: it does not use quota, it
returns a new certificate for the same node (and recreates the node if it was deleted). It must
come with the key of the first activation (the agent keeps its key and reuses it): the batch
secret is shared by every device and fingerprints are often guessable, so otherwise any holder
of the secret could take over another device's node. A re-activation with another key is a 409
``Conflict`` while the node exists; deleting the node releases the device to a new key. So to
keep a device out, take its fingerprint off the whitelist or delete the batch. Recording an
activation is a conditional update of the batch on the version read, retried on conflict, so
concurrent activations never exceed the quota. The records live in the batch's body, which is
why a quota is at most 10,000.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from certs import CertsError, Identity, spki, validate_csr
from management.api.app import CONTEXT, NAMESPACE, ApiContext, json_body
from management.api.views import stored_body
from management.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    Unauthorized,
    Unavailable,
)
from management.matching import node_id
from management.schemas import validate
from management.selectors import Selector, validate_labels
from management.store import Kind, Resource, ResourceConflict, ResourceMissing
from management.tokens import hash_secret, verify_secret

__all__ = [
    "BATCH_LABEL",
    "BATCH_SECRET_PREFIX",
    "QuotaExhausted",
    "activate_batch",
    "add_activation_routes",
    "add_routes",
    "batch_node_name",
]

log = logging.getLogger(__name__)

BATCH_LABEL: Final = "baetyl-batch"
"""The label every node made by a batch carries, with the batch's name as its value."""

BATCH_SECRET_PREFIX: Final = "bs_"  # noqa: S105 - a public prefix, not a password
"""What every batch secret starts with (those made before it was introduced still work)."""

_HASH_DIGITS: Final = 10
_MAX_ATTEMPTS: Final = 50  # each conflict means another activation of the batch went through
_MAX_PAGE_SIZE: Final = 200


class QuotaExhausted(Forbidden):
    code = "QuotaExhausted"


def batch_node_name(batch: str, fingerprint: str) -> str:
    """The node a device becomes: ``<batch>-<first 10 hex digits of sha256(fingerprint)>``."""
    digest = hashlib.sha256(fingerprint.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{batch}-{digest[:_HASH_DIGITS]}"


def _time(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def _records(batch: Resource) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = batch.body.get("activations") or []
    return records


def _view(batch: Resource, *, full: bool) -> dict[str, Any]:
    """The API's JSON for a batch: never its secret's hash; the records only when ``full``."""
    body = batch.body
    records = _records(batch)
    out: dict[str, Any] = {
        "name": batch.name,
        "namespace": batch.namespace,
        "version": str(batch.version),
        "labels": batch.labels,
        "description": body.get("description", ""),
        "createTime": _time(batch.created_at),
        "updateTime": _time(batch.updated_at),
        "fingerprintKind": body["fingerprintKind"],
        "whitelist": body.get("whitelist") or [],
        "quota": body["quota"],
        "activated": len(records),
    }
    if full:
        out["activations"] = [
            {
                "fingerprint": r["fingerprint"],
                "node": r["node"],
                "time": _time(int(r["at"])),
                "ip": r["ip"],
            }
            for r in records
        ]
    return out


# -- admin API -------------------------------------------------------------------------------------


def _ns(request: web.Request) -> str:
    namespace: str = request[NAMESPACE]
    return namespace


def _page_param(request: web.Request, name: str, default: int, high: int) -> int:
    text = request.query.get(name, str(default))
    value = int(text) if text.isascii() and text.isdigit() else 0
    if not 1 <= value <= high:
        raise BadRequest(f"{name} must be a whole number from 1 to {high}.", field=name)
    return value


async def create_batch(request: web.Request) -> web.Response:
    """Create a batch and show its secret, once."""
    ctx: ApiContext = request.app[CONTEXT]
    body = validate("BatchWrite", await json_body(request))
    labels: dict[str, str] = dict(body.get("labels") or {})
    validate_labels(labels, field="labels")
    if BATCH_LABEL in labels:
        raise BadRequest(
            f"labels.{BATCH_LABEL} is set by the server on the batch's nodes; leave it out.",
            field=f"labels.{BATCH_LABEL}",
        )
    # The prefix names what it is (to people and secret scanners) and keeps it from starting
    # with '-', which the CLI's `--secret <value>` would take for an option.
    secret = BATCH_SECRET_PREFIX + secrets.token_urlsafe(32)
    stored = {
        "description": body.get("description", ""),
        "fingerprintKind": body["fingerprintKind"],
        "whitelist": body.get("whitelist") or [],
        "quota": body["quota"],
        "secretHash": hash_secret(secret),
        "activations": [],
    }
    created = await ctx.store.create(
        Resource(_ns(request), Kind.BATCH, str(body["name"]), labels=labels, body=stored)
    )
    log.info("created batch %s/%s (quota %d)", created.namespace, created.name, body["quota"])
    return web.json_response({**_view(created, full=True), "secret": secret}, status=201)


async def list_batches(request: web.Request) -> web.Response:
    """A page of the namespace's batches (selector, name, pageNo, pageSize), without records."""
    ctx: ApiContext = request.app[CONTEXT]
    selector = Selector.parse(request.query.get("selector", ""))
    name_part = request.query.get("name", "")
    page_no = _page_param(request, "pageNo", 1, 1_000_000)
    page_size = _page_param(request, "pageSize", 20, _MAX_PAGE_SIZE)
    items = [
        batch
        for batch in await ctx.store.list(_ns(request), Kind.BATCH)
        if name_part in batch.name and (selector.is_empty() or selector.matches(batch.labels))
    ]
    page = items[(page_no - 1) * page_size : page_no * page_size]
    return web.json_response(
        {
            "total": len(items),
            "pageNo": page_no,
            "pageSize": page_size,
            "items": [_view(batch, full=False) for batch in page],
        }
    )


async def get_batch(request: web.Request) -> web.Response:
    """One batch with its activation records."""
    ctx: ApiContext = request.app[CONTEXT]
    batch = await ctx.store.get(_ns(request), Kind.BATCH, request.match_info["name"])
    return web.json_response(_view(batch, full=True))


async def delete_batch(request: web.Request) -> web.Response:
    """Delete a batch; the nodes it made stay."""
    ctx: ApiContext = request.app[CONTEXT]
    deleted = await ctx.store.delete(_ns(request), Kind.BATCH, request.match_info["name"])
    log.info("deleted batch %s/%s", deleted.namespace, deleted.name)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    """The batch routes of the admin API."""
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches/{name}", get_batch)
    app.router.add_delete("/v1/batches/{name}", delete_batch)


# -- activation --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Device:
    fingerprint: str
    node: str
    key: str  # SHA-256 of the CSR's SubjectPublicKeyInfo, hex
    ip: str


async def _record(
    ctx: ApiContext, namespace: str, batch_name: str, device: _Device, node_exists: bool
) -> bool:
    """Record the device's activation in the batch; whether it was new (and used quota).

    A conditional update on the version read, retried on conflict: two activations at once
    cannot both take the last unit of quota.
    """
    fingerprint, node = device.fingerprint, device.node
    for attempt in range(_MAX_ATTEMPTS):
        batch = await ctx.store.get(namespace, Kind.BATCH, batch_name)
        records = _records(batch)
        entry = {"fingerprint": fingerprint, "node": node, "at": _now_ms(), "ip": device.ip,
                 "key": device.key}  # fmt: skip
        known = next((r for r in records if r["fingerprint"] == fingerprint), None)
        if known is not None:
            if known.get("key") == device.key:
                return False
            if known.get("key") and node_exists:
                raise Conflict(
                    f"This device was activated with another key, and its node {node!r} "
                    "exists. Activate with the key it was first activated with (keep the "
                    "agent's state directory), or have an operator delete the node first."
                )
            # The node is gone (or predates key binding): this key is the device's from now.
            kept = [r for r in records if r is not known]
            updated_records = [*kept, {**entry, "at": known["at"]}]
        else:
            updated_records = None
        for record in records:
            if record["node"] == node and record["fingerprint"] != fingerprint:
                raise Conflict(
                    f"The node name {node!r} derived from this fingerprint is taken by another "
                    "device of the batch; activate this device with a node install command."
                )
        if updated_records is None:
            if len(records) >= int(batch.body["quota"]):
                raise QuotaExhausted(
                    f"The batch {batch_name!r} has used its quota of {batch.body['quota']} "
                    "devices; ask the operator for a batch with room left."
                )
            updated_records = [*records, entry]
        updated = Resource(
            namespace,
            Kind.BATCH,
            batch_name,
            labels=batch.labels,
            body={**batch.body, "activations": updated_records},
        )
        try:
            await ctx.store.update(updated, expected_version=batch.version)
        except ResourceConflict:
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # noqa: S311 # jitter
            continue
        return known is None
    raise Unavailable(
        f"The batch {batch_name!r} is busy with other activations; retry in a few seconds."
    )


async def _ensure_node(ctx: ApiContext, batch: Resource, name: str, fingerprint: str) -> Resource:
    """The device's node, created with the batch's labels if it does not exist."""
    found = await ctx.store.find(batch.namespace, Kind.NODE, name)
    if found is not None:
        return found
    body = validate(
        "NodeWrite",
        {
            "name": name,
            "labels": {**batch.labels, BATCH_LABEL: batch.name},
            "description": f"Activated by batch {batch.name} "
            f"({batch.body['fingerprintKind']} {fingerprint})"[:1024],
        },
    )
    try:
        return await ctx.store.create(stored_body(Kind.NODE, batch.namespace, body, ctx.secrets))
    except Exception:
        # The same device activating twice at once: the other request created it (a
        # ResourceConflict, or on InnoDB the driver's duplicate-key error).
        found = await ctx.store.find(batch.namespace, Kind.NODE, name)
        if found is None:
            raise
        return found


async def activate_batch(request: web.Request) -> web.Response:
    """A device trades the batch secret, its fingerprint and a CSR for its node's certificate."""
    ctx: ApiContext = request.app[CONTEXT]
    body = validate("BatchActivationRequest", await json_body(request))
    namespace, batch_name = str(body["namespace"]), str(body["batch"])
    fingerprint = str(body["fingerprint"])
    batch = await ctx.store.find(namespace, Kind.BATCH, batch_name)
    if batch is None:
        raise NotFound(
            f"There is no batch {batch_name!r} in namespace {namespace!r}; check both names "
            "with the operator."
        )
    if not verify_secret(str(body["secret"]), str(batch.body.get("secretHash", ""))):
        raise Unauthorized(
            f"The secret of batch {batch_name!r} is wrong; use the one shown when the batch was "
            "created."
        )
    whitelist = batch.body.get("whitelist") or []
    if whitelist and fingerprint not in whitelist:
        raise Forbidden(
            f"This device's fingerprint is not on the whitelist of batch {batch_name!r}; ask the "
            "operator to add it, or use a batch that lists it."
        )
    name = batch_node_name(batch_name, fingerprint)
    identity = Identity.node(namespace, name)
    csr = str(body["csr"]).encode()
    try:  # before any quota is used: a device whose CSR is refused may send a better one
        parsed = validate_csr(csr, identity)
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    key = hashlib.sha256(spki(parsed.public_key())).hexdigest()
    existing = await ctx.store.find(namespace, Kind.NODE, name)
    if existing is not None and existing.labels.get(BATCH_LABEL) != batch_name:
        raise Conflict(
            f"A node named {name!r} exists and was not made by batch {batch_name!r}; delete or "
            "rename it, or activate this device with that node's install command."
        )
    ip = request.remote or ""
    device = _Device(fingerprint, name, key, ip)
    try:
        new = await _record(ctx, namespace, batch_name, device, existing is not None)
    except ResourceMissing:
        raise NotFound(
            f"The batch {batch_name!r} was deleted during the activation; ask the operator."
        ) from None
    node = await _ensure_node(ctx, batch, name, fingerprint)
    await ctx.matcher.after_node_change(node)
    issued = await ctx.issue_node_certificate(csr, identity)  # NotFound if deleted meanwhile
    log.info(
        "%s node %s with batch %s (certificate %s)",
        "activated" if new else "re-activated",
        identity.common_name,
        batch_name,
        issued.record.serial_hex,
    )
    answer: dict[str, Any] = {
        "certificate": issued.certificate_pem.decode(),
        "ca": ctx.ca.certificate_pem.decode(),
        "broker": ctx.broker_address,
        "nodeId": node_id(namespace, name),
    }
    return web.json_response(answer, status=201)


def add_activation_routes(app: web.Application) -> None:
    """The batch route of the activation app."""
    app.router.add_post("/v1/activate/batch", activate_batch)

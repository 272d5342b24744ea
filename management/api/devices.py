"""A device's credentials under ``/v1/devices/{name}/``: its password and its certificates.

``POST .../password`` makes a new random password, keeps only its scrypt hash
(``dataplane.hash_password``) and answers the password once; ``DELETE`` removes it.
``POST .../certificates`` signs the device's CSR with the device CA, for the identity the cloud
decides (``Identity.device(namespace, node, name)``, never read from the CSR), and lists its
serial in the device; ``DELETE .../certificates/{serial}`` unlists and revokes it. Each change
is a new version of the device, so its node fetches the device again and its broker applies it.

Crash order: a certificate is issued, then listed. A crash in between leaves a certificate that
no node broker accepts (it checks the serial is listed) and that the device's delete revokes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509

from certs import CertificateNotFoundError, CertsError, Identity, parse_serial
from management.api.app import json_body
from management.api.routes import _MAX_RACE_ATTEMPTS, _ctx, _ns
from management.api.views import CERTIFICATES, PASSWORD_HASH
from management.dataplane import hash_password, new_password
from management.errors import BadRequest, Conflict, NotFound
from management.schemas import validate
from management.store import Kind, Resource, ResourceConflict, ResourceMissing

__all__ = ["MAX_CERTIFICATES", "add_routes"]

log = logging.getLogger(__name__)

MAX_CERTIFICATES = 16  # listed per device: every one is in its node's broker configuration


async def _write_device(
    request: web.Request, change: Callable[[Resource], dict[str, Any]]
) -> Resource:
    """Write ``change(current)`` as the device's new body, conditional on the version read
    (retried when another write came first), and push it to its node."""
    ctx = _ctx(request)
    name = request.match_info["name"]
    current = await ctx.store.get(_ns(request), Kind.DEVICE, name)
    for _ in range(_MAX_RACE_ATTEMPTS):
        resource = Resource(current.namespace, Kind.DEVICE, current.name, labels=current.labels,
                            body=change(current))  # fmt: skip
        try:
            updated = await ctx.store.update(resource, expected_version=current.version)
        except ResourceConflict:
            current = await ctx.store.get(current.namespace, Kind.DEVICE, name)
            continue
        await ctx.matcher.after_device_change(updated.namespace, current, updated)
        return updated
    raise Conflict(f"The device {name!r} kept changing while it was written; retry.")


async def set_password(request: web.Request) -> web.Response:
    """A new random password for the device, answered once; only its hash is kept."""
    password = new_password()
    digest = await asyncio.to_thread(hash_password, password)  # ~50 ms of scrypt
    device = await _write_device(request, lambda d: {**d.body, PASSWORD_HASH: digest})
    log.info("set a new password for device %s/%s", device.namespace, device.name)
    # The device CA too: a password device verifies its node's broker with it, and has no
    # certificate request to get it from.
    answer = {
        "username": device.name,
        "password": password,
        "ca": _ctx(request).devices_ca.certificate_pem.decode(),
    }
    return web.json_response(answer, status=201)


async def delete_password(request: web.Request) -> web.Response:
    """Remove the device's password: it connects with a certificate only."""

    def without(device: Resource) -> dict[str, Any]:
        return {k: v for k, v in device.body.items() if k != PASSWORD_HASH}

    await _write_device(request, without)
    return web.Response(status=204)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _current(entries: Any, now: datetime) -> list[dict[str, Any]]:
    """The listed certificates that have not expired (an expired one connects nowhere)."""
    kept = []
    for entry in entries or []:
        try:
            not_after = datetime.fromisoformat(str(entry["notAfter"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            continue
        if not_after > now:
            kept.append(entry)
    return kept


async def issue_certificate(request: web.Request) -> web.Response:
    """Sign the device's CSR with the device CA and list the certificate in the device."""
    ctx = _ctx(request)
    ca = ctx.devices_ca
    body = validate("DeviceCertificateRequest", await json_body(request))
    device = await ctx.store.get(_ns(request), Kind.DEVICE, request.match_info["name"])
    now = datetime.now(UTC)
    if len(_current(device.body.get(CERTIFICATES), now)) >= MAX_CERTIFICATES:
        raise Conflict(
            f"The device {device.name!r} has {MAX_CERTIFICATES} valid certificates already; "
            "revoke one first (DELETE /v1/devices/{name}/certificates/{serial})."
        )
    identity = Identity.device(device.namespace, str(device.body["node"]), device.name)
    try:
        issued = await asyncio.to_thread(
            ca.issue_from_csr, str(body["csr"]).encode(), identity,
            validity_days=ctx.node_cert_days,
        )  # fmt: skip
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    serial = format(issued.certificate.serial_number, "x")  # the contract's form: lowercase
    entry = {"serial": serial, "notAfter": _iso(issued.certificate.not_valid_after_utc)}
    try:
        await _write_device(
            request,
            lambda d: {**d.body, CERTIFICATES: [*_current(d.body.get(CERTIFICATES), now), entry]},
        )
    except ResourceMissing:
        # Deleted while this was issued: the certificate must not outlive it.
        await asyncio.to_thread(ca.revoke, issued.record.serial,
                                x509.ReasonFlags.cessation_of_operation)  # fmt: skip
        raise NotFound(
            f"The device {device.name!r} no longer exists; nothing was issued."
        ) from None
    log.info("issued certificate %s for device %s", serial, identity.common_name)
    answer = {
        "certificate": issued.certificate_pem.decode(),
        "ca": ca.certificate_pem.decode(),
        "serial": serial,
    }
    return web.json_response(answer, status=201)


async def revoke_certificate(request: web.Request) -> web.Response:
    """Unlist one of the device's certificates and revoke it in the device CA."""
    ctx = _ctx(request)
    ca = ctx.devices_ca
    text = request.match_info["serial"]
    try:
        serial = format(parse_serial(text), "x")
    except (CertsError, ValueError):
        raise BadRequest(f"{text!r} is not a certificate serial; give it in hex, as the device's "
                         "certificates list it.", field="serial") from None  # fmt: skip
    device = await ctx.store.get(_ns(request), Kind.DEVICE, request.match_info["name"])
    listed = [e for e in device.body.get(CERTIFICATES) or [] if isinstance(e, dict)]
    if not any(e.get("serial") == serial for e in listed):
        raise NotFound(f"The device {device.name!r} has no certificate {serial}; see its "
                       "certificates with 'baetyl device get'.")  # fmt: skip
    await _write_device(
        request,
        lambda d: {
            **d.body,
            CERTIFICATES: [e for e in d.body.get(CERTIFICATES) or [] if e.get("serial") != serial],
        },
    )
    with contextlib.suppress(CertificateNotFoundError):  # listed, yet not this CA's: unlisted
        await asyncio.to_thread(
            ca.revoke, parse_serial(serial), x509.ReasonFlags.cessation_of_operation
        )
    log.info("revoked certificate %s of device %s/%s", serial, device.namespace, device.name)
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/devices/{name}/password", set_password)
    app.router.add_delete("/v1/devices/{name}/password", delete_password)
    app.router.add_post("/v1/devices/{name}/certificates", issue_certificate)
    app.router.add_delete("/v1/devices/{name}/certificates/{serial}", revoke_certificate)

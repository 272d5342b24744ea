"""The activation endpoint (HTTPS, port 9003): a node trades its token and CSR for a certificate.

``GET /v1/ca`` answers ``{"ca": <PEM>}``, the CA certificate, to anyone: the node fetches it
without verifying the server, checks its SHA-256 against the one in its install command, and
only then sends its token over TLS verified with that CA.

``POST /v1/activate`` with ``{"token", "csr"}``. The token comes from the node's install command
(``GET /v1/nodes/<name>/init``): signed by the cloud, expiring, usable once. The certificate
names the node the *token* names, whatever the CSR says; the node's private key never leaves
the node. The answer holds the certificate, the CA and the broker's address.

Refused (with ``{code, message, requestId}``): a malformed, forged or expired token (401), a
token already used (401), a token revoked with ``DELETE /v1/nodes/{name}/init`` (401), a token
for a node that no longer exists (404), a bad CSR (400).

``POST /v1/activate/batch`` (``batches.py``) is the other way in: a device of a batch trades the
batch's secret, its own fingerprint and a CSR for the certificate of a node made for it.

``POST /v1/renew`` with ``{"csr"}``, over mutual TLS with the node's *current* certificate: a new
certificate for the same node, for the CSR's (new) key; the answer is ``{certificate, ca, nodeId,
notAfter}``. The current certificate stays valid: the node's MQTT session, made with it, is not
cut, and an answer lost on the way does not leave the node without a working certificate. Once
the node is connected with the new certificate it retires the old one with ``POST
/v1/renew/confirm`` ``{"previous": "<serial hex>"}``, authenticated by the *new* certificate: the
old one is revoked (reason superseded) and goes on the CRL, and the broker then drops only
sessions still made with it. A node that never confirms keeps the old one valid until it expires.

Refused: no client certificate (401), a certificate revoked, superseded or unknown to the CA (401),
one that is not a node's (403), a node that no longer exists (404), a bad CSR (400, field
``csr``). A certificate of another CA, or an expired one, fails the TLS handshake itself.

``POST /v1/broker-certificate`` with ``{"csr", "hosts"}``, over mutual TLS with the node's
certificate (refused as ``/v1/renew`` refuses): the node broker's server certificate, signed by
the *device* CA for the CSR's key (made on the node), CN ``broker.<ns>.<node>``, SANs the hosts
(1 to 16 DNS names or IP addresses), for the node certificates' validity; the answer is
``{certificate, ca}`` with the device CA, which devices trust and the cloud broker never does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs import (
    CertificateNotFoundError,
    CertificateRecord,
    CertsError,
    Identity,
    Status,
    format_serial,
    parse_serial,
    validate_csr,
)
from certs import (
    Kind as IdentityKind,
)
from management import batches
from management.api.app import CONTEXT, ApiContext, errors, json_body
from management.api.views import INSTALL_GENERATION
from management.errors import BadRequest, Forbidden, NotFound, Unauthorized
from management.matching import node_id
from management.schemas import validate
from management.store import Kind, Resource
from management.tokens import ActivationClaims, ActivationKind, TokenError

__all__ = ["MAX_BROKER_HOSTS", "create_activation_app"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger(__name__)


async def activate(request: web.Request) -> web.Response:
    ctx: ApiContext = request.app[CONTEXT]
    body = validate("ActivationRequest", await json_body(request))
    try:
        claims = ctx.signer.verify(str(body["token"]), now=int(time.time()))
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None
    if claims.kind is not ActivationKind.NODE:
        raise Unauthorized(
            "This token is not a node activation token; use the install command of the node."
        )
    node = await ctx.store.find(claims.namespace, Kind.NODE, claims.node)
    if node is None:
        raise NotFound(
            f"The node {claims.node!r} this token was made for no longer exists; create it and "
            "get a new install command."
        )
    _refuse_revoked(claims, node)
    identity = Identity.node(claims.namespace, claims.node)
    csr = str(body["csr"]).encode()
    try:  # before the token is used up: a node whose CSR is refused may send a better one
        validate_csr(csr, identity)
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    if not await ctx.store.use_activation(
        claims.jti, claims.namespace, claims.node, claims.expires_at * 1000
    ):
        raise Unauthorized(
            "This activation token was used already; get a new install command "
            f"('baetyl node init {claims.node}')."
        )
    # Again, now that the token is used up: a revocation that committed while this request ran.
    _refuse_revoked(claims, await ctx.store.find(claims.namespace, Kind.NODE, claims.node))
    issued = await ctx.issue_node_certificate(csr, identity)  # NotFound if deleted meanwhile
    log.info("activated node %s (certificate %s)", identity.common_name, issued.record.serial_hex)
    answer: dict[str, Any] = {
        "certificate": issued.certificate_pem.decode(),
        "ca": ctx.ca.certificate_pem.decode(),
        "broker": ctx.broker_address,
        "nodeId": node_id(claims.namespace, claims.node),
    }
    return web.json_response(answer, status=201)


def _refuse_revoked(claims: ActivationClaims, node: Resource | None) -> None:
    """401 if the node's install commands were revoked since the token was made."""
    if node is not None and claims.generation < int(node.body.get(INSTALL_GENERATION, 0)):
        raise Unauthorized(
            f"This install command was revoked ('baetyl node revoke-init {claims.node}'); get a "
            f"new one ('baetyl node init {claims.node}')."
        )


def _peer_certificate(request: web.Request) -> x509.Certificate:
    """The client certificate TLS verified against our CA; 401 if the client sent none."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Unauthorized(
            "This route needs the node's current certificate: connect with it as the TLS client "
            "certificate (mutual TLS), as 'baetyl edge renew' does."
        )
    return x509.load_der_x509_certificate(der)


@dataclass(frozen=True, slots=True)
class _Holder:
    """The node whose valid certificate a request was made with."""

    certificate: x509.Certificate
    record: CertificateRecord
    identity: Identity
    namespace: str


async def _current_node(request: web.Request) -> _Holder:
    """The node of the valid certificate the request was made with (mutual TLS)."""
    ctx: ApiContext = request.app[CONTEXT]
    certificate = _peer_certificate(request)
    serial = format_serial(certificate.serial_number)
    try:
        identity = Identity.from_certificate(certificate)
    except CertsError as exc:
        raise Forbidden(f"The client certificate names no pybaetyl identity: {exc}") from None
    if identity.kind is not IdentityKind.NODE or identity.namespace is None:
        raise Forbidden(
            f"The client certificate is a {identity.kind}'s ({identity.common_name}); only a "
            "node renews its certificate (or asks for its broker's) here. Use 'baetyl certs "
            "issue' for the others."
        )
    try:
        record = await asyncio.to_thread(ctx.ca.record, certificate.serial_number)
    except CertificateNotFoundError:
        raise Unauthorized(
            f"The client certificate {serial} is not in this CA's registry; activate the node "
            "again with a new install command."
        ) from None
    if record.fingerprint != certificate.fingerprint(hashes.SHA256()).hex() or (
        record.identity != identity
    ):
        raise Unauthorized(
            f"The client certificate {serial} is not the one this CA issued with that serial; "
            "activate the node again with a new install command."
        )
    if record.status is not Status.VALID:
        raise Unauthorized(
            f"The client certificate {serial} is {record.status}, so it cannot renew anything; "
            "use the node's newest certificate, or activate the node again with a new install "
            "command."
        )
    node = await ctx.store.find(identity.namespace, Kind.NODE, identity.name)
    if node is None:
        raise NotFound(
            f"The node {identity.name!r} of namespace {identity.namespace!r} no longer exists; "
            "its certificate cannot be renewed."
        )
    return _Holder(certificate, record, identity, identity.namespace)


async def renew(request: web.Request) -> web.Response:
    """A new certificate for the node of the request's client certificate, for the CSR's key."""
    ctx: ApiContext = request.app[CONTEXT]
    holder = await _current_node(request)
    identity, record = holder.identity, holder.record
    body = await json_body(request)
    csr_text = body.get("csr")
    if not isinstance(csr_text, str) or not csr_text:
        raise BadRequest("The body needs 'csr', a PEM certificate signing request.", field="csr")
    csr = csr_text.encode()
    try:
        request_key = validate_csr(csr, identity).public_key()
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    if request_key == holder.certificate.public_key():
        raise BadRequest(
            "The CSR reuses the key of the current certificate; generate a new key for the "
            "renewal.",
            field="csr",
        )
    try:
        # Not ctx.ca.renew: it supersedes the current certificate at once, which puts it on the
        # CRL and makes the broker cut the session the node still holds with it. The node retires
        # it itself (POST /v1/renew/confirm) once it is connected with the new one.
        issued = await asyncio.to_thread(
            ctx.ca.issue_from_csr, csr, identity, validity_days=ctx.node_cert_days
        )
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None

    def retire_others() -> None:
        # At most two valid certificates per node: the one renewing and the new one. A stolen
        # certificate cannot mint a pile of valid ones, and an earlier unconfirmed renewal (its
        # answer lost) is retired here.
        keep = {record.serial, issued.record.serial}
        for other in ctx.ca.records():
            if (
                other.identity == identity
                and other.status is Status.VALID
                and (other.serial not in keep)
            ):
                ctx.ca.revoke(other.serial, x509.ReasonFlags.superseded)

    await asyncio.to_thread(retire_others)
    if await ctx.store.find(holder.namespace, Kind.NODE, identity.name) is None:
        # The node was deleted while this certificate was issued: it must not outlive it.
        await asyncio.to_thread(
            ctx.ca.revoke, issued.record.serial, x509.ReasonFlags.cessation_of_operation
        )
        raise NotFound(f"The node {identity.name!r} no longer exists; nothing was issued.")
    log.info(
        "renewed the certificate of node %s: %s (was %s)",
        identity.common_name,
        issued.record.serial_hex,
        record.serial_hex,
    )
    answer: dict[str, Any] = {
        "certificate": issued.certificate_pem.decode(),
        "ca": ctx.ca.certificate_pem.decode(),
        "nodeId": node_id(holder.namespace, identity.name),
        "notAfter": issued.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return web.json_response(answer, status=201)


async def confirm_renewal(request: web.Request) -> web.Response:
    """Retire (revoke as superseded) an older certificate of the node of the request's one."""
    ctx: ApiContext = request.app[CONTEXT]
    record = (await _current_node(request)).record
    body = await json_body(request)
    try:
        previous = parse_serial(str(body.get("previous", "")))
    except (CertsError, ValueError):
        raise BadRequest(
            "The body needs 'previous', the serial (hex) of the certificate being retired.",
            field="previous",
        ) from None
    try:
        old = await asyncio.to_thread(ctx.ca.record, previous)
    except CertificateNotFoundError:
        old = None
    if old is None or old.identity != record.identity or old.serial == record.serial:
        raise BadRequest(
            f"{format_serial(previous)} is not another certificate of this node; send the serial "
            "of the certificate the renewal replaced.",
            field="previous",
        )
    if old.not_before > record.not_before:
        raise BadRequest(
            f"{old.serial_hex} is newer than the certificate this request was made with; retire "
            "only older certificates.",
            field="previous",
        )
    if old.status is Status.VALID:
        await asyncio.to_thread(ctx.ca.revoke, old.serial, x509.ReasonFlags.superseded)
        log.info("retired certificate %s of node %s", old.serial_hex, record.common_name)
    return web.json_response({"retired": old.serial_hex})


MAX_BROKER_HOSTS = 16
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}"
    r"[A-Za-z0-9])?)*\.?"
)


def _broker_hosts(body: dict[str, Any]) -> tuple[list[str], list[IPAddress]]:
    """The DNS names and IP addresses of ``hosts``; 400 naming the first that is neither."""
    hosts = body.get("hosts")
    if not isinstance(hosts, list) or not 1 <= len(hosts) <= MAX_BROKER_HOSTS:
        raise BadRequest(
            f"hosts must list 1 to {MAX_BROKER_HOSTS} DNS names or IP addresses devices reach "
            'the node at, e.g. ["gw-1.local", "192.168.1.10"].',
            field="hosts",
        )
    names: list[str] = []
    addresses: list[IPAddress] = []
    for index, host in enumerate(hosts):
        if not isinstance(host, str):
            raise BadRequest(f"hosts[{index}] must be a string.", field=f"hosts[{index}]")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if _DNS_NAME.fullmatch(host) is None:
                raise BadRequest(
                    f"hosts[{index}] {host[:80]!r} is neither a DNS name nor an IP address; give "
                    "e.g. gw-1.local or 192.168.1.10.",
                    field=f"hosts[{index}]",
                ) from None
            if host.rstrip(".").lower() not in names:
                names.append(host.rstrip(".").lower())
        else:
            if address not in addresses:
                addresses.append(address)
    return names, addresses


async def broker_certificate(request: web.Request) -> web.Response:
    """The node broker's server certificate, signed by the device CA, for the caller's node."""
    ctx: ApiContext = request.app[CONTEXT]
    holder = await _current_node(request)
    body = await json_body(request)
    csr_text = body.get("csr")
    if not isinstance(csr_text, str) or not csr_text:
        raise BadRequest("The body needs 'csr', a PEM certificate signing request.", field="csr")
    names, addresses = _broker_hosts(body)
    node_cn = holder.identity.common_name
    ca = ctx.devices_ca
    try:
        issued = await asyncio.to_thread(
            ca.issue_server_from_csr, csr_text.encode(), f"broker.{node_cn}",
            dns_names=names, ip_addresses=addresses, validity_days=ctx.node_cert_days,
            accepted_common_names=[node_cn],
        )  # fmt: skip
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    log.info("issued the broker certificate %s of node %s", issued.record.serial_hex, node_cn)
    answer = {"certificate": issued.certificate_pem.decode(), "ca": ca.certificate_pem.decode()}
    return web.json_response(answer, status=201)


async def ca_certificate(request: web.Request) -> web.Response:
    """The CA certificate (public), which the node pins by the SHA-256 of its install command."""
    ctx: ApiContext = request.app[CONTEXT]
    return web.json_response({"ca": ctx.ca.certificate_pem.decode()})


def create_activation_app(context: ApiContext) -> web.Application:
    """The activation endpoint's application (served over TLS with the server certificate)."""
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024)
    app[CONTEXT] = context
    app.router.add_get("/v1/ca", ca_certificate)
    app.router.add_post("/v1/activate", activate)
    app.router.add_post("/v1/renew", renew)
    app.router.add_post("/v1/renew/confirm", confirm_renewal)
    app.router.add_post("/v1/broker-certificate", broker_certificate)
    batches.add_activation_routes(app)
    return app

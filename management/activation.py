"""The activation endpoint (HTTPS, port 9003): a node trades its token and CSR for a certificate.

``GET /v1/ca`` answers ``{"ca": <PEM>}``, the CA certificate, to anyone: the node fetches it
without verifying the server, checks its SHA-256 against the one in its install command, and
only then sends its token over TLS verified with that CA.

``POST /v1/activate`` with ``{"token", "csr"}``. The token comes from the node's install command
(``GET /v1/nodes/<name>/init``): signed by the cloud, expiring, usable once. The certificate
names the node the *token* names, whatever the CSR says; the node's private key never leaves
the node. The answer holds the certificate, the CA and the broker's address.

Refused (with ``{code, message, requestId}``): a malformed, forged or expired token (401), a
token already used (401), a token for a node that no longer exists (404), a bad CSR (400).

``POST /v1/activate/batch`` (``batches.py``) is the other way in: a device of a batch trades the
batch's secret, its own fingerprint and a CSR for the certificate of a node made for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from certs import CertsError, Identity, validate_csr
from management import batches
from management.api.app import CONTEXT, ApiContext, errors, json_body
from management.api.errors import BadRequest, NotFound, Unauthorized
from management.api.schemas import validate
from management.matching import node_id
from management.store import Kind
from management.tokens import ActivationKind, TokenError

__all__ = ["create_activation_app"]

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
            f"(GET /v1/nodes/{claims.node}/init)."
        )
    try:
        issued = await asyncio.to_thread(
            ctx.ca.issue_from_csr, csr, identity, validity_days=ctx.node_cert_days
        )
    except CertsError as exc:
        raise BadRequest(str(exc), field="csr") from None
    log.info("activated node %s (certificate %s)", identity.common_name, issued.record.serial_hex)
    answer: dict[str, Any] = {
        "certificate": issued.certificate_pem.decode(),
        "ca": ctx.ca.certificate_pem.decode(),
        "broker": {"host": ctx.public_host, "port": ctx.mqtt_port},
        "nodeId": node_id(claims.namespace, claims.node),
    }
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
    batches.add_activation_routes(app)
    return app

"""The aiohttp application of the management API: context, middlewares, health.

::

    app = create_app(context)        # routes in routes.py, OpenAPI in openapi.py

Every request under ``/v1`` (except the OpenAPI document) needs ``Authorization: Bearer
<token>``; the token's namespace is the only one the request sees, and a name from another
namespace is simply not found (404, never 403). Errors are ``{code, message, requestId}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web
from cryptography import x509
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from certs import CertificateAuthority, CertsError, Identity, IssuedCertificate
from management.crypto import SecretBox
from management.errors import (
    BadRequest,
    ManagementError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from management.matching import Matcher
from management.store import Kind, ResourceStore
from management.tokens import TokenError, TokenSigner, parse_api_token, verify_secret
from shadow import Conflict as ShadowConflict
from shadow import RequestError, StoreError
from shadow.server import ShadowService

__all__ = ["CONTEXT", "NAMESPACE", "REQUEST_ID", "ApiContext", "create_app", "json_body"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the handlers use: the stores, the shadow, the keys and the public addresses."""

    store: ResourceStore
    shadow: ShadowService
    matcher: Matcher
    secrets: SecretBox
    signer: TokenSigner
    ca: CertificateAuthority
    public_host: str  # the host name nodes use for the broker and the activation endpoint
    mqtt_port: int
    activation_port: int
    install_token_ttl: int = 3600
    node_cert_days: int = 365
    mqtt_host: str = ""  # the broker's host name for nodes, when not public_host (external bus)
    metrics: CollectorRegistry | None = None  # served at /metrics (management/metrics.py)
    # Signs devices' certificates and node brokers' server certificates (bootstrap.py); the
    # cloud broker never trusts it. None only for a context built without one (no data plane).
    device_ca: CertificateAuthority | None = None

    @property
    def devices_ca(self) -> CertificateAuthority:
        """The device CA, or a 503 saying the cloud was started without one."""
        if self.device_ca is None:
            raise Unavailable("This cloud has no device CA; restart it with 'baetyl up'.")
        return self.device_ca

    @property
    def broker_address(self) -> dict[str, str | int]:
        """Where activated nodes connect: ``{"host": ..., "port": ...}``."""
        return {"host": self.mqtt_host or self.public_host, "port": self.mqtt_port}

    async def issue_node_certificate(self, csr: bytes, identity: Identity) -> IssuedCertificate:
        """Issue a node's certificate from its CSR, for a node that still exists afterwards.

        A node deleted while its certificate was issued (an activation or a renewal racing
        ``DELETE /v1/nodes/<name>``) must not keep it: the delete's revocations may have run
        before the certificate existed, so it is revoked here and ``NotFound`` raised. Raises
        ``BadRequest`` for a CSR the CA refuses.
        """
        namespace = identity.namespace
        if namespace is None:
            raise ValueError(f"{identity} is not a node's identity.")
        try:
            issued = await asyncio.to_thread(
                self.ca.issue_from_csr, csr, identity, validity_days=self.node_cert_days
            )
        except CertsError as exc:
            raise BadRequest(str(exc), field="csr") from None
        if await self.store.find(namespace, Kind.NODE, identity.name) is None:
            await asyncio.to_thread(
                self.ca.revoke, issued.record.serial, x509.ReasonFlags.cessation_of_operation
            )
            raise NotFound(f"The node {identity.name!r} no longer exists; nothing was issued.")
        return issued


CONTEXT = web.AppKey("context", ApiContext)
NAMESPACE = web.RequestKey("namespace", str)  # the namespace of the caller's token
REQUEST_ID = web.RequestKey("request_id", str)
_OPEN_PATHS = frozenset({"/v1/openapi.json", "/docs", "/healthz", "/readyz"})
MAX_BODY = 2 * 1024 * 1024
MAX_BODY_DEPTH = 64  # nesting levels of a body; no resource's schema comes near it
RETRY_AFTER_S = 5  # what a 503 (database unavailable) tells the client to wait
READY_TIMEOUT_S = 3.0  # /readyz answers 503 if the database takes longer than this


def _error(
    request: web.Request, status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "requestId": request.get(REQUEST_ID, ""),
    }
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status)


def _internal_error(request: web.Request, exc: Exception) -> web.Response:
    """Log ``exc`` with its traceback and answer a 500 that says no more than that."""
    log.error("request %s failed", request[REQUEST_ID], exc_info=exc)
    return _error(
        request, 500, "InternalError", "The server failed on this request; it was logged."
    )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate every error into ``{code, message, requestId}`` with its HTTP status."""
    request[REQUEST_ID] = uuid.uuid4().hex
    try:
        response = await handler(request)
    except ManagementError as exc:  # the tree in management/errors.py
        if exc.status == 500:  # a server fault: its text is for the log, not for the caller
            response = _internal_error(request, exc)
        else:
            response = _error(request, exc.status, exc.code, exc.message, exc.field)
    except ShadowConflict as exc:
        response = _error(request, 409, "Conflict", exc.message)
    except RequestError as exc:  # from the shadow: 400/413 on desired state, 500 store down
        if exc.code >= 500:
            response = _error(request, 503, "Unavailable", exc.message)
        else:
            response = _error(request, 400, "ValidationFailed", exc.message)
    except StoreError as exc:
        log.error("request %s: the store failed: %s", request[REQUEST_ID], exc)
        response = _error(
            request, 503, "Unavailable", "The database is unavailable; retry in a few seconds."
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(request, exc.status, exc.reason.replace(" ", ""), exc.reason + ".")
        if "Allow" in exc.headers:  # a 405 says which methods the route has
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception as exc:
        response = _internal_error(request, exc)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    if response.status == 503:  # the database is away: say when to try again (RFC 9110)
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request to its token's namespace, or refuse it with 401."""
    if request.path in _OPEN_PATHS or not request.path.startswith("/v1/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer" or not text.strip():
        raise Unauthorized(
            "This API needs 'Authorization: Bearer <token>'; create a token with "
            "'baetyl tokens create --namespace <ns>'."
        )
    try:
        token_id, secret = parse_api_token(text.strip())
    except TokenError:
        raise Unauthorized("The bearer token is malformed; use the token printed by "
                           "'baetyl tokens create'.") from None  # fmt: skip
    context = request.app[CONTEXT]
    record = await context.store.token(token_id)
    now = int(time.time() * 1000)
    if (
        record is None
        or not verify_secret(secret, record.secret_hash)
        or (record.expires_at is not None and record.expires_at <= now)
    ):
        raise Unauthorized(
            "The bearer token is unknown, revoked or expired; create a new one with "
            "'baetyl tokens create'."
        )
    request[NAMESPACE] = record.namespace
    return await handler(request)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 saying what is wrong with it."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"The body is over {MAX_BODY // (1024 * 1024)} MiB; send less.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"The body is over {MAX_BODY // (1024 * 1024)} MiB; send less."
        ) from None
    try:
        body = json.loads(raw or b"null", parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}); send a JSON object.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    _check_tree(body)
    return body


_TOO_DEEP = f"The body is nested more than {MAX_BODY_DEPTH} levels deep; send a flatter one."


def _not_json(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _check_tree(body: dict[str, Any]) -> None:
    """Refuse what ``json.loads`` takes but nothing after it can handle: nesting deep enough to
    exhaust the recursion of validation and encoding, and lone surrogates (``"\\ud800"``),
    which are not Unicode text and cannot be stored or sent as UTF-8."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(
                    f"The body holds a string that is not Unicode text ({value[:40]!r}); "
                    "send UTF-8 text without lone surrogate escapes."
                ) from None
            continue
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_BODY_DEPTH:
            raise BadRequest(_TOO_DEEP)
        stack.extend((child, depth + 1) for child in children)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers, within ``READY_TIMEOUT_S``, and the MQTT bus is up.

    A database that hangs (stopped, or cut off without a reset) holds a query for as long as TCP
    keeps trying, and a readiness probe must not wait for that (the driver drops a cancelled
    connection). An external broker that is away means no node hears a desired write and no
    report is answered: a replica without it is not ready either (it reconnects by itself).
    """
    if not request.app[CONTEXT].shadow.bus_connected:
        raise Unavailable("The MQTT broker is not reachable; the replica is reconnecting.")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await request.app[CONTEXT].store.db.ping()
    except StoreError:
        raise Unavailable("The database does not answer; the API is not ready.") from None
    except TimeoutError:
        raise Unavailable(
            f"The database did not answer within {READY_TIMEOUT_S:g} s; the API is not ready."
        ) from None
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """The cloud's Prometheus metrics (docs/metrics.md).

    Unauthenticated, like the health probes: Prometheus scrapes without a token, and the figures
    are counts only (no node id, address or secret). The API binds loopback by default; expose
    /metrics beyond it only to the scraper's network.
    """
    registry = request.app[CONTEXT].metrics
    if registry is None:
        raise NotFound("This API has no metrics registry; the cloud serves /metrics.")
    # Collecting walks the broker's sessions (connections by role, queue depths): a few ms at
    # 10,000 nodes, in the event loop like everything the broker does.
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def not_found(_request: web.Request) -> web.Response:
    raise NotFound("There is no such route; see /v1/openapi.json for the routes.")


def create_app(context: ApiContext) -> web.Application:
    """The management API for ``context``: every route under ``/v1``, health, docs."""
    from management import batches  # it imports this module too
    from management.api import devices, nodes, openapi, routes  # they import this module

    app = web.Application(middlewares=[errors, authenticate], client_max_size=MAX_BODY)
    app[CONTEXT] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    routes.add_routes(app)
    nodes.add_routes(app)
    devices.add_routes(app)
    batches.add_routes(app)
    openapi.add_routes(app)
    return app

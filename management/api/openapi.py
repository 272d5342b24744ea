"""The OpenAPI 3.1 document of ``/v1`` (built from the routes and ``schemas.COMPONENTS``) and a
browsable page of it at ``/docs`` that needs nothing from the internet.

The activation endpoints are a separate HTTPS app (``activation.py``, port 9003, no bearer token)
and are not in this document: ``POST /v1/activate`` (``ActivationRequest``: a node's install
token and CSR) and ``POST /v1/activate/batch`` (``BatchActivationRequest``: namespace, batch,
the batch's secret, the device's fingerprint and CSR; see ``batches.py`` for its checks and
status codes). Both answer 201 with an ``ActivationResponse``; their schemas are here. So is
``BrokerCertificateRequest`` of ``POST /v1/broker-certificate`` (mutual TLS with the node's
certificate: a node broker's server certificate from the device CA, ``BrokerCertificate``).
"""

from __future__ import annotations

import functools
import html
import json
from typing import Any

from aiohttp import web

from management.api.routes import COLLECTIONS
from management.schemas import COMPONENTS, EXAMPLES, ref

__all__ = ["add_routes", "document"]

_READ = {
    "NodeWrite": "Node",
    "AppWrite": "App",
    "ConfigWrite": "Config",
    "SecretWrite": "Secret",
    "RegistryWrite": "Registry",
    "CertificateWrite": "Certificate",
    "DeviceWrite": "Device",
    "RouteWrite": "Route",
}
_LIST = {"Secret": "SecretList"}
# The kinds whose writes are also checked for what cannot work (422): apps (routes._check).
_SEMANTIC: dict[str, tuple[int, ...]] = {"app": (422,), "device": (422,), "route": (422,)}


def _error_responses(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "The request is invalid; `field` names what to fix.",
        401: "No valid bearer token.",
        404: "No such resource in the token's namespace.",
        409: "The name is taken, the version is stale, or the resource is in use.",
        413: "The body is over 2 MiB.",
        422: "The body has the right shape but cannot work (e.g. a function app whose code "
        "config no volume mounts); `field` names what to fix.",
        503: "The database is unavailable; retry after `Retry-After` seconds.",
    }
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return {
        str(status): {
            "description": reasons[status],
            "content": {"application/json": {"schema": ref("Error")}},
            **({"headers": retry_after} if status == 503 else {}),
        }
        for status in statuses
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def _body(schema: str) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": ref(schema)}
    if schema in EXAMPLES:
        content["example"] = EXAMPLES[schema]
    return {"required": True, "content": {"application/json": content}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_NODE_DELETE = (
    "Revokes the node's certificates (the broker closes its connection), deletes the node, "
    "revokes again any certificate issued meanwhile, and empties its desired state. A node with "
    "devices is refused (409). A delete "
    "that fails after the first step (503, or the cloud stopped) leaves the node in place but "
    "unable to connect: delete it again."
)
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "Update only if the resource is still at this version.",
    "schema": {"type": "string", "pattern": '^(W/)?"?[0-9]+"?$'},
}
_LIST_PARAMS = [
    {"name": "selector", "in": "query", "schema": {"type": "string"},
     "description": "A Kubernetes label selector on the resources' labels."},
    {"name": "name", "in": "query", "schema": {"type": "string"},
     "description": "Only resources whose name contains this text."},
    {"name": "pageNo", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000000}},
    {"name": "pageSize", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
]  # fmt: skip


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document of the management API."""
    paths: dict[str, Any] = {}
    for collection, (kind, write) in COLLECTIONS.items():
        read = _READ[write]
        tag = collection
        paths[f"/v1/{collection}"] = {
            "get": {
                "tags": [tag],
                "operationId": f"list_{collection}",
                "summary": f"List {collection}",
                "parameters": _LIST_PARAMS,
                "responses": {
                    "200": _json(_LIST.get(read, f"{read}List"), f"A page of {collection}."),
                    **_error_responses(400, 401, 503),
                },
            },
            "post": {
                "tags": [tag],
                "operationId": f"create_{kind}",
                "summary": f"Create a {kind}",
                "requestBody": _body(write),
                "responses": {
                    "201": _json(read, "Created."),
                    **_error_responses(400, 401, 409, 413, *_SEMANTIC.get(kind, ()), 503),
                },
            },
        }
        paths[f"/v1/{collection}/{{name}}"] = {
            "parameters": [_NAME],
            "get": {
                "tags": [tag],
                "operationId": f"get_{kind}",
                "summary": f"Get a {kind}",
                "responses": {"200": _json(read, "Found."), **_error_responses(401, 404, 503)},
            },
            "put": {
                "tags": [tag],
                "operationId": f"update_{kind}",
                "summary": f"Replace a {kind}",
                "parameters": [_IF_MATCH],
                "requestBody": _body(write),
                "responses": {
                    "200": _json(read, "Updated."),
                    **_error_responses(400, 401, 404, 409, 413, *_SEMANTIC.get(kind, ()), 503),
                },
            },
            "delete": {
                "tags": [tag],
                "operationId": f"delete_{kind}",
                "summary": f"Delete a {kind}",
                **({"description": _NODE_DELETE} if kind == "node" else {}),
                "responses": {
                    "204": {"description": "Deleted."},
                    **_error_responses(401, 404, 409, 503),
                },
            },
        }
    node = "/v1/nodes/{name}"
    paths[node + "/apps"] = {
        "parameters": [_NAME],
        "get": {
            "tags": ["nodes"], "operationId": "node_apps", "summary": "Apps the node should run",
            "responses": {"200": {"description": "The apps, with the node's reported status.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_error_responses(401, 404, 503)},
        },
    }  # fmt: skip
    paths[node + "/stats"] = {
        "parameters": [_NAME],
        "get": {
            "tags": ["nodes"], "operationId": "node_stats", "summary": "What the node reported",
            "responses": {"200": {"description": "node, nodestats, appstats, routes, devices.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_error_responses(401, 404, 503)},
        },
    }  # fmt: skip
    properties = {
        "type": "object",
        "required": ["desire"],
        "additionalProperties": False,
        "properties": {"desire": {"type": "object"}},
    }
    paths[node + "/properties"] = {
        "parameters": [_NAME],
        "get": {
            "tags": ["nodes"], "operationId": "get_node_properties",
            "summary": "Desired and reported node properties",
            "responses": {"200": {"description": "desire, report, and refused: the desired "
                                                 "agent properties (baetyl.*) the agent could "
                                                 "not apply, each with its cause.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_error_responses(401, 404, 503)},
        },
        "put": {
            "tags": ["nodes"], "operationId": "put_node_properties",
            "summary": "Replace the desired node properties",
            "parameters": [_IF_MATCH],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": properties}}},
            "responses": {"200": {"description": "desire and report.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_error_responses(400, 401, 404, 409, 503)},
        },
    }  # fmt: skip
    paths[node + "/init"] = {
        "parameters": [_NAME],
        "get": {
            "tags": ["nodes"], "operationId": "node_init",
            "summary": "The install command, with a single-use activation token",
            "responses": {"200": _json("InstallCommand", "The command to run on the node."),
                          **_error_responses(401, 404, 503)},
        },
        "delete": {
            "tags": ["nodes"], "operationId": "revoke_node_init",
            "summary": "Revoke the install commands issued so far",
            "description": "Every install command of the node issued before this call stops "
                           "working (activation answers 401); the node's certificates and the "
                           "commands issued after are not touched.",
            "responses": {"204": {"description": "Revoked."},
                          **_error_responses(401, 404, 409, 503)},
        },
    }  # fmt: skip
    for collection in ("configs", "secrets"):
        paths[f"/v1/{collection}/{{name}}/apps"] = {
            "parameters": [_NAME],
            "get": {
                "tags": [collection], "operationId": f"{collection}_apps",
                "summary": "The apps mounting it",
                "parameters": [p for p in _LIST_PARAMS if p["name"] in ("pageNo", "pageSize")],
                "responses": {"200": _json("AppList", "The apps."),
                              **_error_responses(401, 404, 503)},
            },
        }  # fmt: skip
    for collection, listed in (("configs", "ConfigList"), ("secrets", "SecretList")):
        paths[f"/v1/apps/{{name}}/{collection}"] = {
            "parameters": [_NAME],
            "get": {
                "tags": ["apps"], "operationId": f"app_{collection}",
                "summary": f"The {collection} the app mounts",
                "parameters": [p for p in _LIST_PARAMS if p["name"] in ("pageNo", "pageSize")],
                "responses": {"200": _json(listed, f"The {collection}."),
                              **_error_responses(401, 404, 503)},
            },
        }  # fmt: skip
    paths["/v1/namespace"] = {
        "get": {
            "tags": ["namespace"], "operationId": "get_namespace",
            "summary": "The namespace of the bearer token",
            "responses": {"200": {"description": "Its name.", "content": {"application/json": {
                "schema": {"type": "object", "required": ["name"],
                           "properties": {"name": {"type": "string"}}}}}},
                          **_error_responses(401)},
        },
    }  # fmt: skip
    paths.update(_batch_paths())
    paths.update(_device_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pybaetyl management API",
            "version": "1",
            "description": "Nodes, applications and their configuration, scoped to the "
            "namespace of the bearer token.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _device_paths() -> dict[str, Any]:
    """A device's credentials (``devices.py``): each change is a new version of the device."""
    tag = "devices"
    serial = {
        "name": "serial",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The certificate's serial, hex.",
    }
    return {
        "/v1/devices/{name}/password": {
            "parameters": [_NAME],
            "post": {
                "tags": [tag], "operationId": "set_device_password",
                "summary": "Make a new random password; it is in this answer only",
                "description": "Only its scrypt hash is kept; calling again replaces it.",
                "responses": {"201": _json("DevicePassword", "Username, password, device CA."),
                              **_error_responses(401, 404, 409, 503)},
            },
            "delete": {
                "tags": [tag], "operationId": "delete_device_password",
                "summary": "Remove the device's password",
                "responses": {"204": {"description": "Removed."},
                              **_error_responses(401, 404, 409, 503)},
            },
        },
        "/v1/devices/{name}/certificates": {
            "parameters": [_NAME],
            "post": {
                "tags": [tag], "operationId": "issue_device_certificate",
                "summary": "Sign the device's CSR with the device CA",
                "description": "The identity is the cloud's (namespace, node, device), never the "
                               "CSR's; the serial is listed in the device.",
                "requestBody": _body("DeviceCertificateRequest"),
                "responses": {"201": _json("DeviceCertificateIssued", "The certificate."),
                              **_error_responses(400, 401, 404, 409, 503)},
            },
        },
        "/v1/devices/{name}/certificates/{serial}": {
            "parameters": [_NAME, serial],
            "delete": {
                "tags": [tag], "operationId": "revoke_device_certificate",
                "summary": "Unlist and revoke one of the device's certificates",
                "responses": {"204": {"description": "Revoked."},
                              **_error_responses(400, 401, 404, 409, 503)},
            },
        },
    }  # fmt: skip


def _batch_paths() -> dict[str, Any]:
    """The batch routes (``batches.py``): no update, and the secret is shown only on create."""
    tag = "batches"
    return {
        "/v1/batches": {
            "get": {
                "tags": [tag], "operationId": "list_batches", "summary": "List batches",
                "parameters": _LIST_PARAMS,
                "responses": {"200": _json("BatchList", "A page of batches, without their "
                                           "activation records."),
                              **_error_responses(400, 401, 503)},
            },
            "post": {
                "tags": [tag], "operationId": "create_batch",
                "summary": "Create a batch; its secret is in this answer only",
                "requestBody": _body("BatchWrite"),
                "responses": {"201": _json("BatchCreated", "Created; keep the secret."),
                              **_error_responses(400, 401, 409, 503)},
            },
        },
        "/v1/batches/{name}": {
            "parameters": [_NAME],
            "get": {
                "tags": [tag], "operationId": "get_batch",
                "summary": "Get a batch with its activation records",
                "responses": {"200": _json("Batch", "Found."),
                              **_error_responses(401, 404, 503)},
            },
            "delete": {
                "tags": [tag], "operationId": "delete_batch",
                "summary": "Delete a batch (the nodes it made stay)",
                "responses": {"204": {"description": "Deleted."},
                              **_error_responses(401, 404, 503)},
            },
        },
    }  # fmt: skip


async def openapi_json(_request: web.Request) -> web.Response:
    return web.json_response(document())


async def docs(_request: web.Request) -> web.Response:
    """Every operation with its parameters, body and responses, as one static page."""
    doc = document()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pybaetyl API</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "code,pre{background:#f4f4f4}h3{margin-bottom:.2em}</style></head><body>",
        f"<h1>{html.escape(doc['info']['title'])}</h1>",
        f"<p>{html.escape(doc['info']['description'])} The machine-readable document is "
        "<a href='/v1/openapi.json'>/v1/openapi.json</a>.</p>",
    ]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            parts.append(
                f"<h3><code>{method.upper()} {html.escape(path)}</code></h3>"
                f"<p>{html.escape(operation.get('summary', ''))}</p><ul>"
            )
            for status, response in operation["responses"].items():
                parts.append(f"<li>{status}: {html.escape(response['description'])}</li>")
            parts.append("</ul>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body and "example" in body:
                example = html.escape(json.dumps(body["example"], indent=2))
                parts.append(f"<pre>{example}</pre>")
    parts.append("</body></html>")
    return web.Response(text="".join(parts), content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)

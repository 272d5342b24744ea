"""The JSON shapes of the management REST API (``/v1``), defined once.

:data:`COMPONENTS` holds OpenAPI 3.1 component schemas (JSON Schema 2020-12). The API serves them as
``components.schemas`` of its OpenAPI document, with :data:`EXAMPLES` as their examples, and checks
every request body with :func:`validate`, which turns the most relevant ``jsonschema`` error into a
:class:`ValidationFailed` (``management.errors``) naming the field (``services[0].image``) and
saying what to change.

Write schemas (``NodeWrite``, ``AppWrite``, ...) reject unknown fields. Read schemas (``Node``,
``App``, ...) add the fields the server sets (``namespace``, ``version``, ``createTime``,
``updateTime``) and leave out what is write-only: registry passwords, certificate keys, and batch
secrets after creation. Three ``x-`` extensions, allowed in OpenAPI 3.1 schemas, carry what
JSON Schema cannot say: ``x-uniqueBy`` (array items must differ in that property), ``x-hint`` (the
end of the error sentence when a value has the wrong shape) and ``x-required-hints`` (the same for
a missing property).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from management.errors import ValidationFailed

__all__ = [
    "COMPONENTS",
    "EXAMPLES",
    "READ_SCHEMAS",
    "WRITE_SCHEMAS",
    "ValidationFailed",
    "ref",
    "validate",
]

JsonSchema = dict[str, Any]

_DOCUMENT_URI: Final = "urn:pybaetyl:management-api"
_REF_PREFIX: Final = "#/components/schemas/"


def ref(name: str) -> JsonSchema:
    """Return a JSON Schema reference to the component schema called ``name``."""
    return {"$ref": f"{_REF_PREFIX}{name}"}


# --- field shapes -------------------------------------------------------------------------------

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_HINT = (
    "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, "
    "e.g. web-frontend"
)
_LABEL_HINT = (
    "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or "
    "digit, e.g. edge-01"
)

_NAME: Final[JsonSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$",
    "description": "A DNS-1123 subdomain, unique in the namespace.",
    "x-hint": _NAME_HINT,
}
_LABEL_NAME: Final[JsonSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 63,
    "pattern": rf"^{_DNS_LABEL}$",
    "description": "A DNS-1123 label: no dots.",
    "x-hint": _LABEL_HINT,
}
_NODE_NAME: Final[JsonSchema] = {
    **_LABEL_NAME,
    "description": "A DNS-1123 label, unique in the namespace; the node id is <namespace>.<name>.",
}
_LABELS: Final[JsonSchema] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "maxProperties": 64,
    "description": "Kubernetes-style labels that app selectors match against.",
}
_DESCRIPTION: Final[JsonSchema] = {"type": "string", "maxLength": 1024}
_STRINGS: Final[JsonSchema] = {"type": "array", "items": {"type": "string"}, "maxItems": 256}
_ABSOLUTE_PATH: Final[JsonSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4096,
    "pattern": r"^/",
    "x-hint": "give an absolute path, e.g. /etc/app",
}
_PORT: Final[JsonSchema] = {"type": "integer", "minimum": 1, "maximum": 65535}
_TIMESTAMP: Final[JsonSchema] = {"type": "string", "format": "date-time", "readOnly": True}
_STRING_MAP: Final[JsonSchema] = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "propertyNames": {
        "maxLength": 253,
        "pattern": r"^[-._a-zA-Z0-9]+$",
        "x-hint": "keys become file names: use letters, digits, '-', '_' and '.', e.g. app.yaml",
    },
}


def _pem(label: str, example: str) -> JsonSchema:
    return {
        "type": "string",
        "maxLength": 65536,
        "pattern": rf"^\s*-----BEGIN {label}-----[\s\S]+-----END {label}-----\s*$",
        "x-hint": f"give a PEM block that starts with {example}",
    }


_PEM_CERTIFICATE: Final = _pem("CERTIFICATE", "-----BEGIN CERTIFICATE-----")
_PEM_KEY: Final = _pem("([A-Z]+ )?PRIVATE KEY", "-----BEGIN PRIVATE KEY-----")
_PEM_CSR: Final = _pem("(NEW )?CERTIFICATE REQUEST", "-----BEGIN CERTIFICATE REQUEST-----")
_QUANTITY_HINT = "give a Kubernetes quantity as a string, e.g. {}"
_QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"

_READ_META: Final[dict[str, JsonSchema]] = {
    "namespace": {**_LABEL_NAME, "readOnly": True, "description": "Set by the server."},
    "version": {
        "type": "string",
        "readOnly": True,
        "description": "Opaque; changes on every write.",
    },
    "createTime": _TIMESTAMP,
    "updateTime": _TIMESTAMP,
}
_READ_REQUIRED: Final = ("name", "namespace", "version", "createTime", "updateTime")


def _closed(
    properties: Mapping[str, JsonSchema], required: Sequence[str] = (), **extra: Any
) -> JsonSchema:
    """An object with exactly these properties: unknown ones are refused."""
    schema: JsonSchema = {"type": "object", "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    schema["properties"] = dict(properties)
    schema.update(extra)
    return schema


def _open(properties: Mapping[str, JsonSchema], required: Sequence[str] = ()) -> JsonSchema:
    """A response object: more properties may appear in later versions."""
    return {"type": "object", "required": list(required), "properties": dict(properties)}


def _resource_write(properties: Mapping[str, JsonSchema], required: Sequence[str]) -> JsonSchema:
    """A namespaced resource as clients send it: name, labels, description and its own fields."""
    common = {"name": _NAME, "labels": _LABELS, "description": _DESCRIPTION}
    return _closed({**common, **properties}, ["name", *required])


def _resource_read(
    write: JsonSchema,
    *,
    drop: Sequence[str] = (),
    replace: Mapping[str, JsonSchema] | None = None,
    add: Mapping[str, JsonSchema] | None = None,
) -> JsonSchema:
    """A resource as the server returns it: server fields added, write-only ones dropped."""
    properties = {k: v for k, v in write["properties"].items() if k not in drop}
    properties.update(replace or {})
    properties.update(_READ_META)
    properties.update(add or {})
    required = [r for r in write.get("required", ()) if r not in drop and r != "name"]
    return _open(properties, [*_READ_REQUIRED, *required, *(add or {})])


def _list(item: str) -> JsonSchema:
    """The envelope of a list response."""
    return _open(
        {
            "total": {"type": "integer", "minimum": 0},
            "pageNo": {"type": "integer", "minimum": 1},
            "pageSize": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": ref(item)},
        },
        ["total", "pageNo", "pageSize", "items"],
    )


# --- nodes --------------------------------------------------------------------------------------

_NODE_WRITE = _resource_write(
    {
        "name": _NODE_NAME,
        "properties": {
            "type": "object",
            "maxProperties": 256,
            "description": "Desired node properties: any JSON value under each key.",
        },
        "mode": {"type": "string", "enum": ["native", "kube"], "default": "native"},
    },
    [],
)
_NODE = _resource_read(
    _NODE_WRITE,
    add={
        "online": {"type": "boolean", "readOnly": True},
        "lastSeen": {"type": ["string", "null"], "format": "date-time", "readOnly": True},
        "report": {"type": "object", "readOnly": True, "description": "The reported state."},
        "desire": {"type": "object", "readOnly": True, "description": "The desired state."},
        "apps": {"type": "array", "items": ref("AppRef"), "readOnly": True},
    },
)

# --- apps ---------------------------------------------------------------------------------------

_ENV_VAR = _closed(
    {
        "name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
            "x-hint": "use letters, digits, '_', '-' and '.', not starting with a digit, "
            "e.g. LOG_LEVEL",
        },
        "value": {"type": "string", "default": ""},
    },
    ["name"],
)
_CONTAINER_PORT = _closed(
    {
        "containerPort": _PORT,
        "hostPort": _PORT,
        "protocol": {"type": "string", "enum": ["TCP", "UDP"], "default": "TCP"},
    },
    ["containerPort"],
)
_VOLUME_MOUNT = _closed(
    {
        "name": {**_LABEL_NAME, "description": "The name of a volume of the app."},
        "mountPath": _ABSOLUTE_PATH,
        "readOnly": {"type": "boolean", "default": False},
    },
    ["name", "mountPath"],
)
_RESOURCE_LIST = _closed(
    {
        "cpu": {"type": "string", "pattern": _QUANTITY, "x-hint": _QUANTITY_HINT.format("500m")},
        "memory": {
            "type": "string",
            "pattern": _QUANTITY,
            "x-hint": _QUANTITY_HINT.format("128Mi"),
        },
    }
)
_RESOURCES = _closed({"limits": ref("ResourceList"), "requests": ref("ResourceList")})


def _unique(items: JsonSchema, *, min_items: int = 0, max_items: int) -> JsonSchema:
    """An array whose items differ in their ``name``."""
    schema: JsonSchema = {"type": "array", "items": items, "maxItems": max_items}
    if min_items:
        schema["minItems"] = min_items
    schema["x-uniqueBy"] = "name"
    return schema


_ENV = _unique(ref("EnvVar"), max_items=256)
_VOLUME_MOUNTS = _unique(ref("VolumeMount"), max_items=64)
_CONTAINER_SERVICE = _closed(
    {
        "name": _LABEL_NAME,
        "image": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1024,
            "pattern": r"^\S+$",
            "x-hint": "give an image reference without spaces, e.g. nginx:1.27",
        },
        "command": _STRINGS,
        "args": _STRINGS,
        "env": _ENV,
        "ports": {"type": "array", "items": ref("ContainerPort"), "maxItems": 64},
        "volumeMounts": _VOLUME_MOUNTS,
        "resources": ref("Resources"),
    },
    ["name", "image"],
    **{
        "x-required-hints": {
            "image": "is required for a container app; give the image to run, e.g. nginx:1.27."
        }
    },
)
_NATIVE_SERVICE = _closed(
    {
        "name": _LABEL_NAME,
        "command": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": 256,
            "description": "The process command line: the program, then its first arguments.",
        },
        "args": _STRINGS,
        "env": _ENV,
        "volumeMounts": _VOLUME_MOUNTS,
        "workdir": _ABSOLUTE_PATH,
    },
    ["name", "command"],
    **{
        "x-required-hints": {
            "command": "is required for a native app; give the program to run, "
            'e.g. ["/usr/bin/python3", "-m", "sensor"].'
        }
    },
)
_FUNCTION_HANDLER = _closed(
    {
        "name": _LABEL_NAME,
        "handler": {
            "type": "string",
            "maxLength": 256,
            "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
            "x-hint": "give module.function, e.g. filters.on_message",
        },
        "codeConfig": {**_NAME, "description": "The name of a config that holds the code."},
    },
    ["name", "handler"],
)
_FUNCTION_SERVICE = _closed(
    {
        "name": _LABEL_NAME,
        "runtime": {"type": "string", "enum": ["python3"], "default": "python3"},
        "handlers": _unique(ref("FunctionHandler"), min_items=1, max_items=64),
    },
    ["name", "handlers"],
    **{
        "x-required-hints": {
            "handlers": "is required for a function app; list the functions to serve, "
            'e.g. [{"name": "filter", "handler": "filters.on_message"}].'
        }
    },
)
_VOLUME = _closed(
    {
        "name": _LABEL_NAME,
        "config": _closed({"name": _NAME}, ["name"]),
        "secret": _closed({"name": _NAME}, ["name"]),
        "certificate": _closed(
            {"name": _NAME},
            ["name"],
            description="A stored certificate, mounted as the files tls.crt, tls.key (0600 on a "
            "native node) and ca.crt (when the certificate has a CA).",
        ),
        "hostPath": _closed({"path": _ABSOLUTE_PATH}, ["path"]),
    },
    ["name"],
    oneOf=[
        {"required": ["config"]},
        {"required": ["secret"]},
        {"required": ["certificate"]},
        {"required": ["hostPath"]},
    ],
    **{"x-hint": "give the volume exactly one source: config, secret, certificate or hostPath"},
)
_REGISTRY_REF = _closed(
    {"name": {**_NAME, "description": "The name of a stored registry."}}, ["name"]
)
_APP_TYPES: Final = {
    "container": "ContainerService",
    "native": "NativeService",
    "function": "FunctionService",
}
_APP_WRITE = _resource_write(
    {
        "type": {"type": "string", "enum": list(_APP_TYPES), "default": "container"},
        "selector": {
            "type": "string",
            "maxLength": 4096,
            "description": "A Kubernetes label selector over node labels, e.g. 'site=paris,!test'.",
        },
        "replicas": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 1},
        "workload": {
            "type": "string",
            "enum": ["deployment", "daemonset", "job"],
            "default": "deployment",
        },
        "hostNetwork": {"type": "boolean", "default": False},
        "services": _unique({"type": "object"}, min_items=1, max_items=32),
        "volumes": _unique(ref("Volume"), max_items=64),
        "registries": {
            **_unique(ref("RegistryRef"), max_items=16),
            "description": "The registries a container app pulls its images with: on a "
            "Kubernetes node they become the pod's image pull secret. Only a container app "
            "may name them (native and function apps pull no images).",
        },
    },
    ["services"],
)
# Only a container app pulls images: registries elsewhere would hand their passwords to nodes
# that have no use for them (the cloud serves them to container apps only, too).
_NO_REGISTRIES: Final[JsonSchema] = {
    "not": {"type": "array", "minItems": 1},  # an empty list names none
    "x-hint": "registries apply only to container apps, which pull images; remove them, or "
    'make the app a container app ("type": "container")',
}
# The service shape depends on the app type; an absent type is a container app.
_APP_WRITE["allOf"] = [
    {
        "if": {
            "properties": {"type": {"const": kind}},
            **({} if i == 0 else {"required": ["type"]}),
        },
        "then": {
            "properties": {
                "services": {"items": ref(service)},
                **({} if kind == "container" else {"registries": _NO_REGISTRIES}),
            }
        },
    }
    for i, (kind, service) in enumerate(_APP_TYPES.items())
]
_APP = _resource_read(
    _APP_WRITE,
    replace={
        "services": {
            "type": "array",
            "items": {"anyOf": [ref(service) for service in _APP_TYPES.values()]},
        }
    },
)

# --- configs, secrets, registries, certificates -------------------------------------------------

_CONFIG_WRITE = _resource_write({"data": _STRING_MAP}, ["data"])
_SECRET_WRITE = _resource_write({"data": _STRING_MAP}, ["data"])
_REGISTRY_WRITE = _resource_write(
    {
        "address": {
            "type": "string",
            "maxLength": 1024,
            "pattern": r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
            r"(:[0-9]{1,5})?(/\S*)?$",
            "x-hint": "give host[:port][/path] without a scheme, "
            "e.g. registry.example.com:5000/team",
        },
        "username": {"type": "string", "maxLength": 256},
        "password": {"type": "string", "maxLength": 4096, "writeOnly": True},
    },
    ["address"],
)
_CERTIFICATE_WRITE = _resource_write(
    {
        "data": _closed(
            {
                "certificate": _PEM_CERTIFICATE,
                "key": {**_PEM_KEY, "writeOnly": True},
                "ca": {
                    **_PEM_CERTIFICATE,
                    "description": "The issuing CA (one or more PEM certificates), mounted as "
                    "ca.crt beside tls.crt and tls.key.",
                },
            },
            ["certificate", "key"],
        )
    },
    ["data"],
)
_CERTIFICATE = _resource_read(
    _CERTIFICATE_WRITE,
    replace={
        "data": _open({"certificate": _PEM_CERTIFICATE, "ca": _PEM_CERTIFICATE}, ["certificate"])
    },
    add={
        "fingerprint": {
            "type": "string",
            "readOnly": True,
            "description": "SHA-256 of the DER certificate, hex.",
        },
        "notBefore": _TIMESTAMP,
        "notAfter": _TIMESTAMP,
        "subject": {"type": "string", "readOnly": True},
        "dnsNames": {"type": "array", "items": {"type": "string"}, "readOnly": True},
    },
)

# --- devices and routes (the node data plane, dataplane.py) ---------------------------------------

_TOPIC_FILTERS: Final[JsonSchema] = {
    "type": "array",
    "items": {"type": "string", "maxLength": 1024},
    "maxItems": 1024,
    "description": "Topic filters on the node broker, at most 32 (422 beyond); {device} is the "
    'device\'s name. Default: ["devices/{device}/#"].',
}
_DEVICE_WRITE = _resource_write(
    {
        "name": {
            **_LABEL_NAME,
            "description": "A DNS-1123 label: the device's MQTT client id "
            "and username on its node's broker.",
        },
        "node": {
            **_NODE_NAME,
            "description": "The node (of the namespace) the device connects to; it cannot change.",
        },
        "topics": _closed(
            {"publish": _TOPIC_FILTERS, "subscribe": _TOPIC_FILTERS},
            default={"publish": ["devices/{device}/#"], "subscribe": ["devices/{device}/#"]},
        ),
    },
    ["node"],
)
_DEVICE_CERTIFICATE = _open(
    {"serial": {"type": "string", "description": "Lowercase hex."}, "notAfter": _TIMESTAMP},
    ["serial", "notAfter"],
)
_DEVICE = _resource_read(
    _DEVICE_WRITE,
    add={
        "password": {"type": "boolean", "readOnly": True,
                     "description": "Whether the device has a password (never shown)."},
        "certificates": {"type": "array", "items": ref("DeviceCertificate"), "readOnly": True},
        "online": {"type": "boolean", "readOnly": True,
                   "description": "As its node last reported."},
        "since": {"type": ["number", "null"], "readOnly": True,
                  "description": "Since when (epoch seconds) it is online or offline."},
    },
)  # fmt: skip
_ENDPOINT_TOPIC: Final[JsonSchema] = {"type": "string", "maxLength": 1024}
_ROUTE_ENDPOINT: Final[JsonSchema] = _closed(
    {"local": _ENDPOINT_TOPIC, "cloud": _ENDPOINT_TOPIC},
    description="Exactly one of local (a topic on the node broker) or cloud (under the node's "
    "$baetyl/node/<id>/down/ as a source, up/ as a target).",
)
_ROUTE_WRITE = _resource_write(
    {
        "selector": {
            "type": "string",
            "maxLength": 4096,
            "description": "A Kubernetes label selector over node labels, as for apps.",
        },
        "source": _ROUTE_ENDPOINT,
        "function": _closed(
            {"app": _NAME, "function": _LABEL_NAME},
            ["app", "function"],
            description="A function app of the namespace and one of its functions; its answer "
            "is the message forwarded (empty drops it).",
        ),
        "target": {
            **_ROUTE_ENDPOINT,
            "description": "A topic template: {device}, {node}, {topic} and {1}..{9}.",
        },
        "qos": {"type": "integer", "default": 1, "description": "0 or 1."},
    },
    ["source", "target"],
)

# --- activation, batches, tokens ----------------------------------------------------------------

_BATCH_NAME: Final[JsonSchema] = {
    **_LABEL_NAME,
    "maxLength": 52,
    "description": "A DNS-1123 label of at most 52 characters: its nodes are named "
    "<batch>-<10 hex digits>, which must stay a 63-character label.",
    "x-hint": "use at most 52 lowercase letters, digits and '-', starting and ending with a "
    "letter or digit, e.g. paris-gateways",
}
_FINGERPRINT: Final[JsonSchema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "pattern": r"^[^\x00-\x1f\x7f]+$",
    "description": "What identifies the device: its serial number, host name, machine id or "
    "typed input, as fingerprintKind says.",
    "x-hint": "give printable text without control characters, e.g. GW-2025-000117",
}
_BATCH_WRITE = _resource_write(
    {
        "name": _BATCH_NAME,
        "fingerprintKind": {
            "type": "string",
            "enum": ["serialNumber", "hostname", "machineId", "input"],
        },
        "whitelist": {
            "type": "array",
            "items": _FINGERPRINT,
            "maxItems": 100000,
            "uniqueItems": True,
            "description": "Fingerprints allowed to activate; empty allows any.",
        },
        "quota": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10000,
            "description": "How many devices (distinct fingerprints) may activate with this "
            "batch; its activation records are kept in the batch.",
        },
    },
    ["fingerprintKind", "quota"],
)
_BATCH_ACTIVATION = _open(
    {
        "fingerprint": _FINGERPRINT,
        "node": {**_NODE_NAME, "description": "The node the device became."},
        "time": {**_TIMESTAMP, "description": "When the device first activated."},
        "ip": {"type": "string", "readOnly": True, "description": "The address it came from."},
    },
    ["fingerprint", "node", "time", "ip"],
)
_BATCH = _resource_read(
    _BATCH_WRITE,
    add={
        "activated": {
            "type": "integer",
            "minimum": 0,
            "readOnly": True,
            "description": "How many devices activated; each uses one of the quota.",
        }
    },
)
_BATCH["properties"]["activations"] = {
    "type": "array",
    "items": ref("BatchActivation"),
    "readOnly": True,
    "description": "Who activated: shown by GET /v1/batches/{name}, left out of lists.",
}
_BATCH_SECRET: Final[JsonSchema] = {
    "type": "string",
    "readOnly": True,
    "description": (
        "Returned once, by the create call; keep it, it cannot be read again. It starts with bs_."
    ),
}
_API_TOKEN = _open(
    {
        "id": {"type": "string", "readOnly": True},
        "name": _NAME,
        "namespace": _READ_META["namespace"],
        "createTime": _TIMESTAMP,
        "expiresAt": {"type": ["string", "null"], "format": "date-time", "readOnly": True},
    },
    ["id", "name", "namespace", "createTime", "expiresAt"],
)

COMPONENTS: Final[dict[str, JsonSchema]] = {
    "NodeWrite": _NODE_WRITE,
    "Node": _NODE,
    "AppRef": _open({"name": _NAME, "version": {"type": "string"}}, ["name", "version"]),
    "AppWrite": _APP_WRITE,
    "App": _APP,
    "ContainerService": _CONTAINER_SERVICE,
    "NativeService": _NATIVE_SERVICE,
    "FunctionService": _FUNCTION_SERVICE,
    "FunctionHandler": _FUNCTION_HANDLER,
    "EnvVar": _ENV_VAR,
    "ContainerPort": _CONTAINER_PORT,
    "VolumeMount": _VOLUME_MOUNT,
    "Resources": _RESOURCES,
    "ResourceList": _RESOURCE_LIST,
    "Volume": _VOLUME,
    "RegistryRef": _REGISTRY_REF,
    "ConfigWrite": _CONFIG_WRITE,
    "Config": _resource_read(_CONFIG_WRITE),
    "SecretWrite": _SECRET_WRITE,
    "Secret": _resource_read(_SECRET_WRITE),
    "SecretSummary": _resource_read(_SECRET_WRITE, drop=["data"]),
    "RegistryWrite": _REGISTRY_WRITE,
    "Registry": _resource_read(_REGISTRY_WRITE, drop=["password"]),
    "CertificateWrite": _CERTIFICATE_WRITE,
    "Certificate": _CERTIFICATE,
    "DeviceWrite": _DEVICE_WRITE,
    "Device": _DEVICE,
    "DeviceCertificate": _DEVICE_CERTIFICATE,
    "DevicePassword": _open(
        {
            "username": {"type": "string"},
            "password": {"type": "string", "description": "Shown once: only its hash is kept."},
            "ca": {
                **_PEM_CERTIFICATE,
                "description": "The device CA: the device verifies its node's broker with it.",
            },
        },
        ["username", "password", "ca"],
    ),
    "DeviceCertificateRequest": _closed({"csr": _PEM_CSR}, ["csr"]),
    "DeviceCertificateIssued": _open(
        {
            "certificate": _PEM_CERTIFICATE,
            "ca": {**_PEM_CERTIFICATE, "description": "The device CA."},
            "serial": {"type": "string", "description": "Lowercase hex."},
        },
        ["certificate", "ca", "serial"],
    ),
    "RouteWrite": _ROUTE_WRITE,
    "Route": _resource_read(_ROUTE_WRITE),
    "BrokerCertificateRequest": _closed(
        {
            "csr": _PEM_CSR,
            "hosts": {
                "type": "array",
                "items": {"type": "string", "maxLength": 253},
                "minItems": 1,
                "maxItems": 16,
                "description": "DNS names or IP addresses devices reach the node at.",
            },
        },
        ["csr", "hosts"],
    ),
    "BrokerCertificate": _open(
        {
            "certificate": _PEM_CERTIFICATE,
            "ca": {**_PEM_CERTIFICATE, "description": "The device CA."},
        },
        ["certificate", "ca"],
    ),
    "BatchWrite": _BATCH_WRITE,
    "Batch": _BATCH,
    "BatchActivation": _BATCH_ACTIVATION,
    "BatchCreated": {
        **_BATCH,
        "required": [*_BATCH["required"], "secret"],
        "properties": {**_BATCH["properties"], "secret": _BATCH_SECRET},
    },
    "BatchActivationRequest": _closed(
        {
            "batch": _BATCH_NAME,
            "namespace": _LABEL_NAME,
            "fingerprint": _FINGERPRINT,
            "secret": {"type": "string", "minLength": 1, "maxLength": 1024, "writeOnly": True},
            "csr": _PEM_CSR,
        },
        ["batch", "namespace", "fingerprint", "secret", "csr"],
    ),
    "ActivationRequest": _closed(
        {
            "token": {"type": "string", "minLength": 1, "maxLength": 4096, "writeOnly": True},
            "csr": _PEM_CSR,
        },
        ["token", "csr"],
    ),
    "ActivationResponse": _open(
        {
            "certificate": _PEM_CERTIFICATE,
            "ca": _PEM_CERTIFICATE,
            "broker": _open({"host": {"type": "string"}, "port": _PORT}, ["host", "port"]),
            "nodeId": {"type": "string", "description": "<namespace>.<name>"},
        },
        ["certificate", "ca", "broker", "nodeId"],
    ),
    "InstallCommand": _open(
        {
            "cmd": {"type": "string", "description": "The shell command to run on the device."},
            "token": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
        },
        ["cmd", "token", "expiresAt"],
    ),
    "ApiTokenWrite": _closed(
        {"name": _NAME, "expiresInDays": {"type": "integer", "minimum": 1, "maximum": 3650}},
        ["name"],
    ),
    "ApiToken": _API_TOKEN,
    "ApiTokenCreated": {
        **_API_TOKEN,
        "required": [*_API_TOKEN["required"], "token"],
        "properties": {
            **_API_TOKEN["properties"],
            "token": {
                "type": "string",
                "readOnly": True,
                "description": "Returned once, by the create call; send it as a Bearer token.",
            },
        },
    },
    "Error": _open(
        {
            "code": {"type": "string", "description": "E.g. NotFound, ValidationFailed."},
            "message": {"type": "string", "description": "A sentence that says what to do."},
            "requestId": {"type": "string"},
            "field": {
                "type": "string",
                "description": "The field at fault, e.g. services[0].image.",
            },
        },
        ["code", "message", "requestId"],
    ),
    **{
        f"{name}List": _list(item)
        for name, item in [
            ("Node", "Node"),
            ("App", "App"),
            ("Config", "Config"),
            ("Secret", "SecretSummary"),
            ("Registry", "Registry"),
            ("Certificate", "Certificate"),
            ("Device", "Device"),
            ("Route", "Route"),
            ("Batch", "Batch"),
            ("ApiToken", "ApiToken"),
        ]
    },
}

WRITE_SCHEMAS: Final = (
    "NodeWrite",
    "AppWrite",
    "ConfigWrite",
    "SecretWrite",
    "RegistryWrite",
    "CertificateWrite",
    "DeviceWrite",
    "DeviceCertificateRequest",
    "RouteWrite",
    "BrokerCertificateRequest",
    "BatchWrite",
    "BatchActivationRequest",
    "ActivationRequest",
    "ApiTokenWrite",
)
"""The schemas of request bodies; :func:`validate` is meant for these."""

READ_SCHEMAS: Final = tuple(name for name in COMPONENTS if name not in WRITE_SCHEMAS)
"""The schemas of response bodies and of their parts."""

# --- examples -----------------------------------------------------------------------------------

_EXAMPLE_CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBszCCAVmgAwIBAgIUJk0rBq2h3l0Rz8mC5bX2oY6n1dEwCgYIKoZIzj0EAwIw\n"
    "-----END CERTIFICATE-----\n"
)
_EXAMPLE_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3Jx0c2VjcmV0a2V5\n"
    "-----END PRIVATE KEY-----\n"
)
_EXAMPLE_CSR = (
    "-----BEGIN CERTIFICATE REQUEST-----\n"
    "MIHzMIGbAgEAMDkxFDASBgNVBAoMC3B5YmFldHlsLWVkZ2UxITAfBgNVBAMMGGRl\n"
    "-----END CERTIFICATE REQUEST-----\n"
)
_EXAMPLE_META: Final = {
    "namespace": "default",
    "version": "8f3a1c2e",
    "createTime": "2025-03-01T09:30:00Z",
    "updateTime": "2025-03-02T14:05:12Z",
}

EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "NodeWrite": {
        "name": "edge-01",
        "labels": {"site": "paris", "line": "3"},
        "description": "Packaging line gateway",
        "properties": {"sampleIntervalSeconds": 5},
        "mode": "native",
    },
    "AppWrite": {
        "name": "opcua-bridge",
        "labels": {"team": "ot"},
        "description": "Reads the PLC over OPC UA and publishes to MQTT",
        "type": "container",
        "selector": "site=paris,line in (3,4)",
        "replicas": 1,
        "workload": "deployment",
        "hostNetwork": False,
        "services": [
            {
                "name": "bridge",
                "image": "registry.example.com/ot/opcua-bridge:2.4.1",
                "args": ["--config", "/etc/bridge/bridge.yaml"],
                "env": [{"name": "LOG_LEVEL", "value": "info"}],
                "ports": [{"containerPort": 4840, "hostPort": 4840, "protocol": "TCP"}],
                "volumeMounts": [
                    {"name": "bridge-conf", "mountPath": "/etc/bridge", "readOnly": True},
                    {"name": "plc-cert", "mountPath": "/var/lib/bridge/pki", "readOnly": True},
                    {"name": "plc-ca", "mountPath": "/var/lib/bridge/ca", "readOnly": True},
                ],
                "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                },
            }
        ],
        "volumes": [
            {"name": "bridge-conf", "config": {"name": "opcua-bridge-conf"}},
            {"name": "plc-cert", "secret": {"name": "plc-client-cert"}},
            {"name": "plc-ca", "certificate": {"name": "plc-server-ca"}},
        ],
        "registries": [{"name": "company-registry"}],
    },
    "ConfigWrite": {
        "name": "opcua-bridge-conf",
        "labels": {"team": "ot"},
        "description": "Bridge settings",
        "data": {"bridge.yaml": "endpoint: opc.tcp://10.0.3.20:4840\ntopic: plant/line3\n"},
    },
    "SecretWrite": {
        "name": "plc-client-cert",
        "labels": {"team": "ot"},
        "data": {"username": "bridge", "password": "s3cr3t-example"},
    },
    "RegistryWrite": {
        "name": "company-registry",
        "description": "Private images of the OT team",
        "address": "registry.example.com:5000/ot",
        "username": "robot-edge",
        "password": "example-password",
    },
    "CertificateWrite": {
        "name": "plc-server-ca",
        "description": "Trust anchor of the PLC",
        "data": {"certificate": _EXAMPLE_CERT, "key": _EXAMPLE_KEY},
    },
    "DeviceWrite": {
        "name": "thermo-1",
        "node": "edge-01",
        "labels": {"site": "paris"},
        "description": "Cold room thermometer",
        "topics": {
            "publish": ["devices/{device}/telemetry"],
            "subscribe": ["devices/{device}/commands/#"],
        },
    },
    "RouteWrite": {
        "name": "telemetry-up",
        "selector": "site=paris",
        "description": "Thermometers' readings to the cloud",
        "source": {"local": "devices/+/telemetry"},
        "target": {"cloud": "telemetry/{device}"},
        "qos": 1,
    },
    "DeviceCertificateRequest": {"csr": _EXAMPLE_CSR},
    "BrokerCertificateRequest": {
        "csr": _EXAMPLE_CSR,
        "hosts": ["gw-1.local", "192.168.1.10", "127.0.0.1", "localhost"],
    },
    "BatchWrite": {
        "name": "paris-gateways",
        "labels": {"site": "paris"},
        "description": "The 2025 gateway order",
        "fingerprintKind": "serialNumber",
        "whitelist": ["GW-2025-000117", "GW-2025-000118"],
        "quota": 20,
    },
    "BatchActivationRequest": {
        "batch": "paris-gateways",
        "namespace": "default",
        "fingerprint": "GW-2025-000117",
        "secret": "b4tch-s3cret-example",
        "csr": _EXAMPLE_CSR,
    },
    "ActivationRequest": {
        "token": "eyJub2RlIjoiZGVmYXVsdC5lZGdlLTAxIn0.example",
        "csr": _EXAMPLE_CSR,
    },
    "ApiTokenWrite": {"name": "ci-deployer", "expiresInDays": 90},
    "Node": {
        "name": "edge-01",
        "labels": {"site": "paris", "line": "3"},
        "description": "Packaging line gateway",
        "properties": {"sampleIntervalSeconds": 5},
        "mode": "native",
        **_EXAMPLE_META,
        "online": True,
        "lastSeen": "2025-03-02T14:05:10Z",
        "report": {"node": {"hostname": "gw-117", "arch": "arm64"}},
        "desire": {"apps": [{"name": "opcua-bridge", "version": "5d1e9b70"}]},
        "apps": [{"name": "opcua-bridge", "version": "5d1e9b70"}],
    },
    "Error": {
        "code": "ValidationFailed",
        "message": "services[0].image is required for a container app; "
        "give the image to run, e.g. nginx:1.27.",
        "requestId": "3f2c9a7e0b1d4c55",
        "field": "services[0].image",
    },
    "InstallCommand": {
        "cmd": "curl -fsSL 'https://cloud.example.com:9003/v1/init?token=...' | sh",
        "token": "eyJub2RlIjoiZGVmYXVsdC5lZGdlLTAxIn0.example",
        "expiresAt": "2025-03-02T15:05:12Z",
    },
    "ActivationResponse": {
        "certificate": _EXAMPLE_CERT,
        "ca": _EXAMPLE_CERT,
        "broker": {"host": "mqtt.example.com", "port": 8883},
        "nodeId": "default.edge-01",
    },
}
"""A realistic body per schema, for the OpenAPI document's ``example`` fields and for tests."""
EXAMPLES["App"] = {**EXAMPLES["AppWrite"], **_EXAMPLE_META}
EXAMPLES["BatchCreated"] = {
    **EXAMPLES["BatchWrite"],
    **_EXAMPLE_META,
    "activated": 0,
    "secret": "b4tch-s3cret-example",
}
EXAMPLES["Batch"] = {
    **EXAMPLES["BatchWrite"],
    **_EXAMPLE_META,
    "activated": 1,
    "activations": [
        {
            "fingerprint": "GW-2025-000117",
            "node": "paris-gateways-3f1c9a0b7e",
            "time": "2025-03-02T14:05:12.345Z",
            "ip": "203.0.113.7",
        }
    ],
}

# --- validation ---------------------------------------------------------------------------------

_FORMATS: Final = FormatChecker(formats=())
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _is_date_time(value: object) -> bool:
    """An RFC 3339 timestamp with a time zone, e.g. 2025-03-02T14:05:12Z."""
    if not isinstance(value, str):
        return True
    if _RFC3339.fullmatch(value) is None:
        return False
    datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


_FORMATS.checks("date-time", raises=ValueError)(_is_date_time)


def _unique_by(
    validator: Validator, key: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """The ``x-uniqueBy`` keyword: the items of an array differ in the property ``key``."""
    if not isinstance(instance, list):
        return
    seen: dict[object, int] = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue
        if item[key] in seen:
            yield ValidationError(
                f"{key} {item[key]!r} is used twice", path=[index, key], validator_value=key
            )
        seen.setdefault(item[key], index)


# Typed here because the typeshed stubs leave ``extend`` unannotated.
_extend: Callable[..., type[Validator]] = validators.extend
_ApiValidator: Final = _extend(Draft202012Validator, {"x-uniqueBy": _unique_by})


@cache
def _registry() -> Registry[Any]:
    """The OpenAPI components as one document that ``#/components/schemas/...`` refers into."""
    document: Resource[Any] = DRAFT202012.create_resource({"components": {"schemas": COMPONENTS}})
    registry: Registry[Any] = Registry().with_resource(_DOCUMENT_URI, document)
    return registry


@cache
def _validator(schema_name: str) -> Validator:
    if schema_name not in COMPONENTS:
        known = ", ".join(sorted(COMPONENTS))
        raise KeyError(f"No schema is named {schema_name!r}; use one of {known}.")
    schema = {"$ref": f"{_DOCUMENT_URI}{_REF_PREFIX}{schema_name}"}
    validator: Validator = _ApiValidator(schema, registry=_registry(), format_checker=_FORMATS)
    return validator


def validate(schema_name: str, body: object) -> dict[str, Any]:
    """Check ``body`` against the component ``schema_name`` and return a copy with defaults filled.

    Only top-level defaults are filled (``mode``, ``type``, ``replicas``...); nested ones
    (``protocol``, ``readOnly``) are left to the reader. Raises :class:`ValidationFailed` for the
    most relevant error and :class:`KeyError` for an unknown schema name.
    """
    instance: Any = body
    error: ValidationError | None = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        raise _failure(error)
    if not isinstance(body, dict):
        raise ValidationFailed("", "The request body must be a JSON object; send {...}.")
    result = copy.deepcopy(body)
    for key, prop in COMPONENTS[schema_name].get("properties", {}).items():
        if "default" in prop and key not in result:
            result[key] = copy.deepcopy(prop["default"])
    return result


# --- error messages -----------------------------------------------------------------------------

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JSON_TYPES: Final = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "an array",
    "null": "null",
}
_READ_ONLY_FIELDS: Final = frozenset(_READ_META) | {
    "online", "lastSeen", "report", "desire", "apps", "fingerprint", "notBefore", "notAfter",
    "subject", "dnsNames", "id", "token", "activated", "activations", "password", "since",
}  # fmt: skip


def _field(path: Sequence[object]) -> str:
    """A path like ``services[0].image`` or ``labels["app.kubernetes.io/name"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _failure(found: ValidationError) -> ValidationFailed:
    """Turn a ``jsonschema`` error into a field path and a sentence that says what to do."""
    # A oneOf whose branches all failed alike is reported as itself, not as one of its branches.
    error: Any = found  # its fields are JSON values, or unset sentinels that are never read here
    while error.parent is not None and error.parent.validator == "oneOf":
        error = error.parent
    path = list(error.absolute_path)
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    kind, value, instance = error.validator, error.validator_value, error.instance
    hint = schema.get("x-hint")

    if kind == "required":
        missing = next(p for p in value if isinstance(instance, dict) and p not in instance)
        field = _field([*path, missing])
        tail = schema.get("x-required-hints", {}).get(
            missing, "is required; add it to the request."
        )
        return ValidationFailed(field, f"{field} {tail}")
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        extra = sorted(k for k in instance if k not in known)[0]
        field = _field([*path, extra])
        if not path and extra in _READ_ONLY_FIELDS:
            return ValidationFailed(field, f"{field} is set by the server; leave it out.")
        names = ", ".join(known)
        return ValidationFailed(
            field, f"{field} is not a known field; remove it or use one of {names}."
        )
    if "propertyNames" in error.absolute_schema_path:
        field = _field([*path, instance])
        return ValidationFailed(field, f"{field} is not a valid key; {hint}.")
    if kind == "x-uniqueBy":
        taken = instance[path[-2]][value]
        first = next(i for i, item in enumerate(instance) if item.get(value) == taken)
        field, other = _field(path), _field([*path[:-2], first])
        return ValidationFailed(
            field, f"{field} {_shown(taken)} is taken by {other}; give each its own {value}."
        )

    field = _field(path)
    subject = field or "The request body"
    secret = bool(schema.get("writeOnly"))
    message: str
    if kind == "type":
        wanted = " or ".join(_JSON_TYPES[t] for t in ([value] if isinstance(value, str) else value))
        message = f"{subject} must be {wanted}, not {_JSON_TYPES[_json_type(instance)]}."
    elif kind in ("enum", "const"):
        options = ", ".join(_shown(v) for v in (value if kind == "enum" else [value]))
        message = f"{subject} must be one of {options}, not {_shown(instance)}."
    elif kind == "oneOf" and hint:
        message = f"{subject} is not valid; {hint}."
    elif kind == "not" and hint:
        message = f"{subject} is not allowed here: {hint}."
    elif kind in ("pattern", "format"):
        shown = "" if secret else f" {_shown(instance)}"
        message = f"{subject}{shown} is not valid; {hint or f'it must be a valid {value}'}."
    elif kind in ("minimum", "maximum"):
        bound = "at least" if kind == "minimum" else "at most"
        message = f"{subject} must be {bound} {value}, not {_shown(instance)}."
    elif kind in ("minLength", "maxLength"):
        bound = "at least" if kind == "minLength" else "at most"
        message = f"{subject} must be {bound} {value} characters long."
    elif kind in ("minItems", "maxItems"):
        bound = "at least" if kind == "minItems" else "at most"
        message = f"{subject} must have {bound} {value} item{'s' if value != 1 else ''}."
    elif kind == "maxProperties":
        message = f"{subject} may have at most {value} entries; remove some."
    elif kind == "uniqueItems":
        message = f"{subject} repeats an item; list each only once."
    else:
        message = f"{subject} is not valid: {error.message}."
    return ValidationFailed(field, message)

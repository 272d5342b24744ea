"""The messages on the shadow topics: parsing requests, building answers (PROTOCOL.md).

Requests are parsed from decoded payloads (``codec.decode``) into frozen values; anything
unexpected (an unknown field, a wrong type, a token too long) is a ``BadRequest`` naming the
field. Answers are plain dicts, encoded by ``codec.encode`` in the encoding of the request.
The edge builds its requests with ``report_message``, ``get_message`` and
``resource_get_message``, and uses the ``parse_*`` functions of the answers and ``DesiredFollower``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shadow.document import JSONObject, Section
from shadow.errors import BadRequest, Conflict, RequestError

__all__ = [
    "MAX_CLIENT_TOKEN_LENGTH",
    "Accepted",
    "Delta",
    "DesireMessage",
    "DesiredFollower",
    "GetRequest",
    "Rejected",
    "ReportRequest",
    "ResourceKind",
    "ResourceMessage",
    "ResourceRequest",
    "accepted",
    "client_token_of",
    "delta_message",
    "desire_message",
    "get_message",
    "parse_accepted",
    "parse_delta",
    "parse_desire",
    "parse_get",
    "parse_rejected",
    "parse_report",
    "parse_resource",
    "parse_resource_get",
    "rejected",
    "report_message",
    "resource_get_message",
    "resource_message",
]

MAX_CLIENT_TOKEN_LENGTH = 64
MAX_RESOURCE_VERSION_LENGTH = 64
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class ResourceKind(StrEnum):
    APP = "app"
    CONFIG = "config"
    SECRET = "secret"  # noqa: S105 # a resource kind, not a password
    REGISTRY = "registry"
    CERTIFICATE = "certificate"
    DEVICE = "device"  # a device bound to the node (the node broker's credentials and ACL)
    ROUTE = "route"  # a route placed on the node by its selector


# -- field helpers -------------------------------------------------------------------------------


def _only(obj: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise BadRequest(
            f"{what} has an unknown field {unknown[0]!r}; its fields are {', '.join(allowed)}."
        )


def _token(obj: Mapping[str, Any]) -> str | None:
    token = obj.get("clientToken")
    if token is None:
        return None
    if (
        not isinstance(token, str)
        or not 0 < len(token) <= MAX_CLIENT_TOKEN_LENGTH
        or not token.isprintable()
    ):
        raise BadRequest(
            f"clientToken must be a string of 1 to {MAX_CLIENT_TOKEN_LENGTH} printable "
            "characters; send a shorter token or none."
        )
    return token


def _int(obj: Mapping[str, Any], key: str, *, required: bool, what: str) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{what} needs {key!r}, a whole number of 0 or more.")
        return None
    if type(value) is not int or value < 0 or value >= 2**63:
        raise BadRequest(f"{key!r} must be a whole number from 0 to 2^63-1, not {value!r}.")
    return value


def _object(obj: Mapping[str, Any], key: str, what: str) -> JSONObject:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise BadRequest(f"{what} needs {key!r}, a JSON object (got {type(value).__name__}).")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str, *, max_length: int = 253) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise BadRequest(f"{what} needs {key!r}, a string of 1 to {max_length} characters.")
    return value


def client_token_of(obj: object) -> str | None:
    """The request's clientToken if it is a valid one, to echo even when the rest is bad."""
    if isinstance(obj, dict):
        try:
            return _token(obj)
        except BadRequest:
            return None
    return None


# -- requests (node -> cloud) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """``report``: a reported-state patch, optionally naming the version it was based on."""

    reported: JSONObject
    client_token: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class GetRequest:
    """``desire/get``: ask for the full desired document."""

    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """``resource/get``: ask for one app, config, secret, registry or certificate spec by
    (kind, name, version)."""

    kind: ResourceKind
    name: str
    version: str
    client_token: str | None = None


def parse_report(obj: Mapping[str, Any]) -> ReportRequest:
    _only(obj, ("clientToken", "version", "reported"), "A report")
    return ReportRequest(
        reported=_object(obj, "reported", "A report"),
        client_token=_token(obj),
        version=_int(obj, "version", required=False, what="A report"),
    )


def parse_get(obj: Mapping[str, Any]) -> GetRequest:
    _only(obj, ("clientToken",), "A desire/get request")
    return GetRequest(client_token=_token(obj))


def parse_resource_get(obj: Mapping[str, Any]) -> ResourceRequest:
    what = "A resource/get request"
    _only(obj, ("clientToken", "kind", "name", "version"), what)
    token = _token(obj)
    kind = obj.get("kind")
    if kind not in tuple(ResourceKind):
        raise BadRequest(f"'kind' must be one of {', '.join(ResourceKind)}, not {kind!r}.")
    name = _str(obj, "name", what)
    if not _NAME.match(name):
        raise BadRequest(
            f"'name' {name!r} is not a resource name: use lower-case letters, digits, '-' and '.'."
        )
    version = _str(obj, "version", what, max_length=MAX_RESOURCE_VERSION_LENGTH)
    return ResourceRequest(ResourceKind(kind), name, version, token)


# -- answers (cloud -> node) ----------------------------------------------------------------------


def _with_token(message: dict[str, Any], client_token: str | None) -> dict[str, Any]:
    if client_token is not None:
        message["clientToken"] = client_token
    return message


def report_message(request: ReportRequest) -> dict[str, Any]:
    """``report``, as the edge sends it."""
    message: dict[str, Any] = {"reported": request.reported}
    if request.version is not None:
        message["version"] = request.version
    return _with_token(message, request.client_token)


def get_message(request: GetRequest) -> dict[str, Any]:
    """``desire/get``, as the edge sends it."""
    return _with_token({}, request.client_token)


def resource_get_message(request: ResourceRequest) -> dict[str, Any]:
    """``resource/get``, as the edge sends it."""
    message = {"kind": request.kind.value, "name": request.name, "version": request.version}
    return _with_token(dict(message), request.client_token)


def desire_message(
    desired: Section, now_ms: int, client_token: str | None = None
) -> dict[str, Any]:
    """``desire``: the full desired document and its version."""
    return _with_token(
        {"version": desired.version, "desired": desired.state, "timestamp": now_ms}, client_token
    )


def accepted(client_token: str | None, version: int, now_ms: int) -> dict[str, Any]:
    """``report/accepted``: the report is stored durably; ``version`` is the new reported one."""
    return _with_token({"version": version, "timestamp": now_ms}, client_token)


def rejected(error: RequestError, client_token: str | None, now_ms: int) -> dict[str, Any]:
    """``*/rejected``: the code and message of the refusal (409 adds the current version)."""
    message: dict[str, Any] = {"code": error.code, "message": error.message, "timestamp": now_ms}
    if isinstance(error, Conflict):
        message["version"] = error.current_version
    return _with_token(message, client_token)


def delta_message(desired_version: int, delta: JSONObject, now_ms: int) -> dict[str, Any]:
    """``delta``: the desired keys that differ from reported, at a desired version."""
    return {"version": desired_version, "delta": delta, "timestamp": now_ms}


def resource_message(request: ResourceRequest, spec: JSONObject, now_ms: int) -> dict[str, Any]:
    """``resource``: the spec asked for."""
    return _with_token(
        {
            "kind": request.kind.value,
            "name": request.name,
            "version": request.version,
            "spec": spec,
            "timestamp": now_ms,
        },
        request.client_token,
    )


# -- answers parsed (what the edge uses) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesireMessage:
    version: int
    desired: JSONObject
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    version: int
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    code: int
    message: str
    timestamp: int
    client_token: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    version: int
    delta: JSONObject
    timestamp: int


@dataclass(frozen=True, slots=True)
class ResourceMessage:
    kind: ResourceKind
    name: str
    version: str
    spec: JSONObject
    timestamp: int
    client_token: str | None = None


def _timestamp(obj: Mapping[str, Any], what: str) -> int:
    value = _int(obj, "timestamp", required=True, what=what)
    assert value is not None
    return value


def _version(obj: Mapping[str, Any], what: str) -> int:
    value = _int(obj, "version", required=True, what=what)
    assert value is not None
    return value


def parse_desire(obj: Mapping[str, Any]) -> DesireMessage:
    what = "A desire message"
    _only(obj, ("version", "desired", "timestamp", "clientToken"), what)
    return DesireMessage(
        _version(obj, what), _object(obj, "desired", what), _timestamp(obj, what), _token(obj)
    )


def parse_accepted(obj: Mapping[str, Any]) -> Accepted:
    what = "An accepted message"
    _only(obj, ("version", "timestamp", "clientToken"), what)
    return Accepted(_version(obj, what), _timestamp(obj, what), _token(obj))


def parse_rejected(obj: Mapping[str, Any]) -> Rejected:
    what = "A rejected message"
    _only(obj, ("code", "message", "timestamp", "clientToken", "version"), what)
    code = _int(obj, "code", required=True, what=what)
    assert code is not None
    return Rejected(
        code,
        _str(obj, "message", what, max_length=4096),
        _timestamp(obj, what),
        _token(obj),
        _int(obj, "version", required=False, what=what),
    )


def parse_delta(obj: Mapping[str, Any]) -> Delta:
    what = "A delta message"
    _only(obj, ("version", "delta", "timestamp"), what)
    return Delta(_version(obj, what), _object(obj, "delta", what), _timestamp(obj, what))


def parse_resource(obj: Mapping[str, Any]) -> ResourceMessage:
    what = "A resource message"
    _only(obj, ("kind", "name", "version", "spec", "timestamp", "clientToken"), what)
    kind = obj.get("kind")
    if kind not in tuple(ResourceKind):
        raise BadRequest(f"'kind' must be one of {', '.join(ResourceKind)}, not {kind!r}.")
    return ResourceMessage(
        ResourceKind(kind),
        _str(obj, "name", what),
        _str(obj, "version", what, max_length=MAX_RESOURCE_VERSION_LENGTH),
        _object(obj, "spec", what),
        _timestamp(obj, what),
        _token(obj),
    )


class DesiredFollower:
    """The edge's side of desired versions: apply only what is newer than what it has.

    Desire messages may arrive twice (QoS 1 redelivery) or out of order (an answer to
    ``desire/get`` crossing a push); whatever arrives at or below the version already taken is
    stale and ignored, so an older document is never applied after a newer one.
    """

    def __init__(self, version: int = 0) -> None:
        self.version = version

    def offer(self, message: DesireMessage) -> bool:
        """Take ``message`` if it is newer; returns whether it was taken."""
        if message.version <= self.version:
            return False
        self.version = message.version
        return True

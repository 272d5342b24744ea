"""The node data plane's resources: devices and routes, their checks and what a node gets.

A ``Device`` is bound to one node of its namespace: the topics it may publish and subscribe to on
that node's broker (``{device}`` expands to its name), a password (only a scrypt hash kept) and
client certificates from the device CA (only their serials kept). A ``Route`` is placed on nodes
by label selector like an app: a source (a local topic filter, or the node's downlink), an
optional function, a target (a local topic, or the node's uplink) and a QoS. PROTOCOL.md
(``resource/get``) gives the shapes nodes get.

Every check here raises ``Unprocessable`` (422) with a sentence naming the field and what to do:
the body has the right shape (``schemas.py`` checked it) but could not work on a node.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from broker import valid_filter
from management.errors import Unprocessable
from management.store import Resource

__all__ = [
    "DEFAULT_TOPICS",
    "MAX_TOPICS",
    "check_device_topics",
    "check_route",
    "device_answer",
    "devices_of",
    "hash_password",
    "new_password",
    "route_answer",
    "route_function",
    "routes_using",
    "verify_password",
]

DEFAULT_TOPICS = ("devices/{device}/#",)
MAX_TOPICS = 32  # per direction: each is checked by the node broker on every publish
MAX_FILTER_LENGTH = 1024
# The password hash format (PROTOCOL.md, resource/get): scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN, SALT_BYTES = 16384, 8, 1, 32, 16
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TEMPLATE_NAMES = frozenset({"device", "node", "topic", *(str(i) for i in range(1, 10))})


# -- topics ----------------------------------------------------------------------------------------


def _check_filter(text: str, field: str, *, placeholders: frozenset[str]) -> str:
    """``text`` as a topic filter, with its placeholders replaced by one plain level; 422 if it
    names another placeholder, starts with ``$`` or is not a valid MQTT filter."""
    if not text:
        raise Unprocessable(f"{field} is empty; give a topic filter, e.g. devices/+/telemetry.",
                            field=field)  # fmt: skip
    if len(text) > MAX_FILTER_LENGTH:
        raise Unprocessable(f"{field} is over {MAX_FILTER_LENGTH} characters; shorten it.",
                            field=field)  # fmt: skip
    for name in _PLACEHOLDER.findall(text):
        if name not in placeholders:
            allowed = ", ".join("{" + p + "}" for p in sorted(placeholders)) or "none"
            raise Unprocessable(
                f"{field} {text!r} names the placeholder {{{name}}}; the only one allowed here "
                f"is {allowed}.",
                field=field,
            )
    plain = _PLACEHOLDER.sub("x", text)
    if "{" in plain or "}" in plain:
        raise Unprocessable(
            f"{field} {text!r} has an unmatched brace; write placeholders as {{name}}.", field=field
        )
    if plain.startswith("$"):
        raise Unprocessable(
            f"{field} {text!r} starts with '$'; '$' topics belong to the platform, so choose a "
            "topic that does not.",
            field=field,
        )
    if not valid_filter(plain):
        raise Unprocessable(
            f"{field} {text!r} is not a valid MQTT topic filter: '+' and '#' must fill a whole "
            "level and '#' must be the last one, e.g. devices/+/telemetry or devices/#.",
            field=field,
        )
    return plain


def check_device_topics(topics: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The device's ``topics`` with both directions filled (defaults) and every filter checked."""
    out: dict[str, list[str]] = {}
    for direction in ("publish", "subscribe"):
        given = (topics or {}).get(direction)
        filters = list(DEFAULT_TOPICS) if given is None else [str(f) for f in given]
        if len(filters) > MAX_TOPICS:
            raise Unprocessable(
                f"topics.{direction} has {len(filters)} filters; at most {MAX_TOPICS} are "
                "allowed, so merge some with wildcards.",
                field=f"topics.{direction}",
            )
        for index, text in enumerate(filters):
            _check_filter(text, f"topics.{direction}[{index}]", placeholders=frozenset({"device"}))
        out[direction] = filters
    return out


def _expand(filters: Iterable[Any], device: str) -> list[str]:
    return [str(f).replace("{device}", device) for f in filters]


# -- passwords -------------------------------------------------------------------------------------


def new_password() -> str:
    """A random password for a device (shown once): 24 URL-safe characters, 144 bits."""
    return secrets.token_urlsafe(18)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$16384$8$1$<salt b64>$<hash b64>`` (hashlib.scrypt, 16-byte salt, 32-byte key).

    About 50 ms of CPU and 16 MiB: call it off the event loop.
    """
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_DKLEN)  # fmt: skip
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``hash_password`` string ``stored``."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                                  n=int(n), r=int(r), p=int(p), dklen=len(expected))  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, expected)


# -- devices ---------------------------------------------------------------------------------------


def devices_of(node: Resource, devices: Iterable[Resource]) -> list[Resource]:
    """The devices bound to ``node``, by name."""
    return sorted(
        (d for d in devices if d.namespace == node.namespace and d.body.get("node") == node.name),
        key=lambda d: d.name,
    )


def device_answer(device: Resource) -> dict[str, Any]:
    """What the device's node gets on ``resource/get``: its ACL expanded and its credentials."""
    topics = device.body.get("topics") or {}
    return {
        "name": device.name,
        "publish": _expand(topics.get("publish", DEFAULT_TOPICS), device.name),
        "subscribe": _expand(topics.get("subscribe", DEFAULT_TOPICS), device.name),
        "passwordHash": device.body.get("passwordHash"),
        "certificates": [
            str(entry["serial"])
            for entry in device.body.get("certificates") or []
            if isinstance(entry, dict) and "serial" in entry
        ],
    }


# -- routes ----------------------------------------------------------------------------------------


def _endpoint(value: Any, field: str) -> tuple[str, str]:
    """``("local"|"cloud", topic)`` of a source or target: exactly one of the two."""
    given = [key for key in ("local", "cloud") if isinstance(value, dict) and key in value]
    if len(given) != 1:
        raise Unprocessable(
            f"{field} must name exactly one of local or cloud, e.g. "
            f'{{"local": "devices/+/telemetry"}}; it names {" and ".join(given) or "neither"}.',
            field=field,
        )
    return given[0], str(value[given[0]])


def _source_levels(plain: str) -> int | None:
    """How many levels a topic matching the source filter has (None if ``#`` makes it vary)."""
    levels = plain.split("/")
    return None if levels[-1] == "#" else len(levels)


def _check_target(text: str, field: str, levels: int | None) -> None:
    """A target template: known placeholders, literal parts without wildcards, ``$`` or empty
    levels, and level numbers the source has."""
    if not text:
        raise Unprocessable(f"{field} is empty; give a topic, e.g. telemetry/{{device}}.",
                            field=field)  # fmt: skip
    if len(text) > MAX_FILTER_LENGTH:
        raise Unprocessable(f"{field} is over {MAX_FILTER_LENGTH} characters; shorten it.",
                            field=field)  # fmt: skip
    for name in _PLACEHOLDER.findall(text):
        if name not in _TEMPLATE_NAMES:
            raise Unprocessable(
                f"{field} {text!r} names the placeholder {{{name}}}; use only {{device}}, "
                "{node}, {topic} or {1}..{9} (the source topic's levels).",
                field=field,
            )
        if name.isdigit() and levels is not None and int(name) > levels:
            raise Unprocessable(
                f"{field} {text!r} names level {{{name}}}, but the source's topics have only "
                f"{levels} level(s); use {{1}}..{{{levels}}} or {{topic}}.",
                field=field,
            )
    literal = _PLACEHOLDER.sub("x", text)
    if "{" in literal or "}" in literal:
        raise Unprocessable(
            f"{field} {text!r} has an unmatched brace; write placeholders as {{name}}.", field=field
        )
    if "+" in literal or "#" in literal or "\x00" in literal:
        raise Unprocessable(
            f"{field} {text!r} holds a wildcard ('+' or '#'); a target is a topic name, not a "
            "filter: use {1}..{9} or {topic} to carry parts of the source topic.",
            field=field,
        )
    if literal.startswith("$"):
        raise Unprocessable(f"{field} {text!r} starts with '$'; choose a topic that does not.",
                            field=field)  # fmt: skip
    if "" in literal.split("/"):
        raise Unprocessable(
            f"{field} {text!r} has an empty level ('//', or '/' at an end); remove it.", field=field
        )


def route_function(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(app, function)`` of a route's function, if it names one."""
    function = body.get("function")
    if not isinstance(function, dict):
        return None
    return str(function.get("app")), str(function.get("function"))


def _functions_of(app: Resource) -> set[str]:
    return {
        str(handler.get("name"))
        for service in app.body.get("services") or []
        if isinstance(service, dict)
        for handler in service.get("handlers") or []
        if isinstance(handler, dict)
    }


def check_route(body: Mapping[str, Any], apps: Sequence[Resource]) -> None:
    """A route's source, target, QoS and function, against the namespace's ``apps``."""
    source_kind, source = _endpoint(body.get("source"), "source")
    target_kind, target = _endpoint(body.get("target"), "target")
    if source_kind == "cloud" and target_kind == "cloud":
        raise Unprocessable(
            "A route from the cloud to the cloud never touches the node; make the source or the "
            'target local, e.g. "target": {"local": "commands/{1}"}.',
            field="target",
        )
    plain = _check_filter(source, f"source.{source_kind}", placeholders=frozenset())
    _check_target(target, f"target.{target_kind}", _source_levels(plain))
    qos = body.get("qos", 1)
    if isinstance(qos, bool) or qos not in (0, 1):
        raise Unprocessable(f"qos must be 0 or 1, not {qos!r}.", field="qos")
    named = route_function(body)
    if named is None:
        return
    app_name, function = named
    app = next((a for a in apps if a.name == app_name), None)
    if app is None or app.body.get("type") != "function":
        raise Unprocessable(
            f"function.app: there is no function app named {app_name!r} in this namespace; "
            "create it first (an app of type function).",
            field="function.app",
        )
    if function not in _functions_of(app):
        known = ", ".join(sorted(_functions_of(app))) or "none"
        raise Unprocessable(
            f"function.function: the app {app_name!r} has no function {function!r}; use one of "
            f"{known}.",
            field="function.function",
        )


def route_answer(route: Resource) -> dict[str, Any]:
    """What a node the route is placed on gets on ``resource/get``."""
    body = route.body
    named = route_function(body)
    return {
        "name": route.name,
        "source": dict(body.get("source") or {}),
        "function": None if named is None else {"app": named[0], "function": named[1]},
        "target": dict(body.get("target") or {}),
        "qos": int(body.get("qos", 1)),
    }


def routes_using(app: str, routes: Iterable[Resource]) -> list[str]:
    """Names of the routes whose function is in ``app``."""
    return [r.name for r in routes if (named := route_function(r.body)) and named[0] == app]

"""Routes and devices as the cloud's ``resource/get`` answers them, and target templates.

:meth:`RouteSpec.parse` and :meth:`DeviceSpec.parse` check everything the agent and the node broker
rely on and raise :class:`~edge.errors.RouteSpecError` with a sentence saying what to change; the
cloud checks the same when the resource is written (422), so on a node a refusal means a cloud
older or newer than the agent, never a user's typo.

A target topic is a template (PROTOCOL.md "Routes"): ``{device}`` (the device that published;
``local`` for the node's local clients, ``cloud`` for the downlink), ``{node}`` (the node's name),
``{topic}`` (the whole source topic; for a cloud source the part after ``down/``) and ``{1}`` to
``{9}`` (the source topic's levels, 1-based). Nothing else may be in braces. A template is
compiled once (:func:`compile_template`); :func:`render` refuses a result that is not a topic a
route may publish to, with the reason, which the router counts as a failed message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge.dataplane.filters import MAX_TOPIC_BYTES, valid_filter
from edge.errors import RouteSpecError

__all__ = [
    "DEVICE_CLOUD",
    "DEVICE_LOCAL",
    "DeviceSpec",
    "Endpoint",
    "FunctionRef",
    "RouteSpec",
    "RouteSpecError",
    "Side",
    "Template",
    "compile_template",
    "render",
]

DEVICE_LOCAL = "local"  # {device} of a message from the node broker's local (loopback) listener
DEVICE_CLOUD = "cloud"  # {device} of a downlink message
MAX_DEVICE_FILTERS = 32
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Routes and apps are named like every resource of the API: DNS-1123 subdomains (devices are
# labels); a node refusing a name the API accepted would spool for the route and never send.
_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_FUNCTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAMES = frozenset({"device", "node", "topic", *(str(n) for n in range(1, 10))})
_SERIAL = re.compile(r"[0-9a-f]{1,40}")
_HASH = re.compile(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+")


class Side(StrEnum):
    """Where a route's source or target is: the node broker, or the node's cloud link."""

    LOCAL = "local"
    CLOUD = "cloud"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route's source (a topic filter) or target (a topic template) on one side."""

    side: Side
    topic: str


@dataclass(frozen=True, slots=True)
class FunctionRef:
    """A function of a function app of the namespace: called with each message's payload."""

    app: str
    function: str


@dataclass(frozen=True, slots=True)
class Template:
    """A target topic compiled: literal parts and the placeholders between them."""

    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal, placeholder name or None)
    levels: int  # the highest {n} it uses (0: none)

    def render(self, *, device: str, node: str, topic: str) -> str:
        """The topic for one message; RouteSpecError if it is not one a route may publish to."""
        if len(self.parts) == 1 and self.parts[0][1] is None:
            return self.text
        split = topic.split("/") if self.levels else ()
        if len(split) < self.levels:
            raise RouteSpecError(
                f"The target {self.text!r} uses level {{{self.levels}}} but the source topic "
                f"{topic!r} has only {len(split)}; use levels the source filter guarantees."
            )
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            if name == "device":
                out.append(device)
            elif name == "node":
                out.append(node)
            elif name == "topic":
                out.append(topic)
            else:
                out.append(split[int(name) - 1])
        result = "".join(out)
        _check_rendered(self.text, result)
        return result


def _check_rendered(template: str, result: str) -> None:
    if not result:
        raise RouteSpecError(f"The target {template!r} rendered an empty topic.")
    if result.startswith("$"):
        raise RouteSpecError(
            f"The target {template!r} rendered {result!r}, a '$' topic; routes never publish there."
        )
    if "+" in result or "#" in result or "\x00" in result:
        raise RouteSpecError(
            f"The target {template!r} rendered {result!r}, which holds a wildcard or NUL."
        )
    if len(result.encode()) > MAX_TOPIC_BYTES:
        raise RouteSpecError(f"The target {template!r} rendered a topic over 65535 bytes.")


@functools.lru_cache(maxsize=1024)
def compile_template(text: str) -> Template:
    """``text`` compiled; RouteSpecError if it names anything but the placeholders above, or
    if its literal parts alone make a wildcard, a NUL, a ``$`` topic or an empty level."""
    if not isinstance(text, str) or not text:
        raise RouteSpecError("A target topic must be a non-empty string such as 'alerts/{device}'.")
    parts: list[tuple[str, str | None]] = []
    levels = 0
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1)
        if name not in _NAMES:
            raise RouteSpecError(
                f"The target {text!r} names {{{name}}}; use only {{device}}, {{node}}, "
                "{topic} and {1}..{9}."
            )
        parts.append((text[position : match.start()], name))
        if name.isdigit():
            levels = max(levels, int(name))
        position = match.end()
    parts.append((text[position:], None))
    literal = "".join(part for part, _ in parts)
    if "{" in literal or "}" in literal:
        raise RouteSpecError(
            f"The target {text!r} has a brace outside a placeholder; braces only enclose "
            "{device}, {node}, {topic} or {1}..{9}."
        )
    if "+" in literal or "#" in literal or "\x00" in literal:
        raise RouteSpecError(
            f"The target {text!r} holds a wildcard or NUL; a target is a topic, not a filter."
        )
    if text.startswith("$"):
        raise RouteSpecError(f"The target {text!r} starts with '$'; routes never publish there.")
    if any(level == "" for level in text.split("/")):
        raise RouteSpecError(
            f"The target {text!r} has an empty level (a leading, trailing or double '/'); "
            "remove it."
        )
    return Template(text, tuple(parts), levels)


def render(template: str, *, device: str, node: str, topic: str) -> str:
    """``template`` rendered for one message (see the module docstring); RouteSpecError if the
    template is invalid or the result is not a topic a route may publish to."""
    return compile_template(template).render(device=device, node=node, topic=topic)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route, checked: from a source filter, through an optional function, to a target."""

    name: str
    source: Endpoint
    function: FunctionRef | None
    target: Endpoint
    qos: int
    template: Template

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> RouteSpec:
        """The ``resource/get`` answer of kind ``route``; RouteSpecError says what is wrong."""
        if not isinstance(spec, Mapping):
            raise RouteSpecError(f"A route must be a JSON object, not {type(spec).__name__}.")
        name = spec.get("name")
        if not isinstance(name, str) or not _SUBDOMAIN.fullmatch(name):
            raise RouteSpecError(f"A route's name must be a DNS subdomain, not {name!r}.")
        what = f"Route {name!r}"
        source = _endpoint(spec.get("source"), f"{what}'s source")
        if not valid_filter(source.topic) or source.topic.startswith("$"):
            raise RouteSpecError(
                f"{what}'s source {source.topic!r} is not a topic filter a route may read: "
                "wildcards fill whole levels, '#' comes last, no '$'."
            )
        target = _endpoint(spec.get("target"), f"{what}'s target")
        if source.side is Side.CLOUD and target.side is Side.CLOUD:
            raise RouteSpecError(f"{what} goes from the cloud to the cloud; target 'local'.")
        try:
            template = compile_template(target.topic)
        except RouteSpecError as exc:
            raise RouteSpecError(f"{what}: {exc}") from None
        function = _function(spec.get("function"), what)
        qos = spec.get("qos", 1)
        if isinstance(qos, bool) or qos not in (0, 1):
            raise RouteSpecError(f"{what}'s qos must be 0 or 1, not {qos!r}.")
        return cls(name, source, function, target, int(qos), template)

    def render(self, *, device: str, node: str, topic: str) -> str:
        """The target topic for one message (RouteSpecError if it is not one)."""
        return self.template.render(device=device, node=node, topic=topic)


def _endpoint(value: object, what: str) -> Endpoint:
    if not isinstance(value, Mapping) or len(value) != 1:
        raise RouteSpecError(
            f"{what} must be an object with exactly one of 'local' or 'cloud', not {value!r}."
        )
    ((side, topic),) = value.items()
    if side not in (Side.LOCAL.value, Side.CLOUD.value):
        raise RouteSpecError(f"{what} must be 'local' or 'cloud', not {side!r}.")
    if not isinstance(topic, str) or not topic:
        raise RouteSpecError(f"{what}'s topic must be a non-empty string, not {topic!r}.")
    return Endpoint(Side(side), topic)


def _function(value: object, what: str) -> FunctionRef | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"app", "function"}:
        raise RouteSpecError(
            f"{what}'s function must be null or {{'app': ..., 'function': ...}}, not {value!r}."
        )
    app, function = value["app"], value["function"]
    if not isinstance(app, str) or not _SUBDOMAIN.fullmatch(app):
        raise RouteSpecError(f"{what}'s function app must be an app name, not {app!r}.")
    if not isinstance(function, str) or not _FUNCTION.fullmatch(function):
        raise RouteSpecError(f"{what}'s function must be a function name, not {function!r}.")
    return FunctionRef(app, function)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A device bound to this node, checked: what the node broker lets it do and how it proves
    who it is (its password's scrypt hash, its certificates' serials)."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    password_hash: str | None
    certificates: tuple[str, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> DeviceSpec:
        """The ``resource/get`` answer of kind ``device``; RouteSpecError says what is wrong."""
        if not isinstance(spec, Mapping):
            raise RouteSpecError(f"A device must be a JSON object, not {type(spec).__name__}.")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RouteSpecError(f"A device's name must be a DNS label, not {name!r}.")
        what = f"Device {name!r}"
        publish = _filters(spec.get("publish"), f"{what}'s publish filters")
        subscribe = _filters(spec.get("subscribe"), f"{what}'s subscribe filters")
        password_hash = spec.get("passwordHash")
        if password_hash is not None and (
            not isinstance(password_hash, str) or not _HASH.fullmatch(password_hash)
        ):
            # Never echo it: it is a secret's hash.
            raise RouteSpecError(
                f"{what}'s passwordHash is not scrypt$N$r$p$<salt>$<hash>; set its password again."
            )
        certificates = spec.get("certificates", [])
        if not isinstance(certificates, Sequence) or isinstance(certificates, str):
            raise RouteSpecError(f"{what}'s certificates must be a list of serials in hex.")
        for serial in certificates:
            if not isinstance(serial, str) or not _SERIAL.fullmatch(serial):
                raise RouteSpecError(
                    f"{what}'s certificate serial {serial!r} is not lowercase hex."
                )
        return cls(name, publish, subscribe, password_hash, tuple(certificates))

    def as_config(self) -> dict[str, Any]:
        """The device's entry in the node broker's ``config.json``."""
        return {
            "name": self.name,
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "passwordHash": self.password_hash,
            "certificates": list(self.certificates),
        }


def _filters(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise RouteSpecError(f"{what} must be a list of topic filters, not {value!r}.")
    if len(value) > MAX_DEVICE_FILTERS:
        raise RouteSpecError(f"{what} number {len(value)}; at most {MAX_DEVICE_FILTERS}.")
    for topic_filter in value:
        if not isinstance(topic_filter, str) or not valid_filter(topic_filter):
            raise RouteSpecError(f"{what}: {topic_filter!r} is not a topic filter.")
        if topic_filter.startswith("$"):
            raise RouteSpecError(f"{what}: {topic_filter!r} starts with '$'; devices never may.")
    return tuple(value)

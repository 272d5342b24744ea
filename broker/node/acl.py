"""Who may touch which topic on a node broker: devices by their configured filters, the agent
everything, local clients anything but ``$`` topics.

A device publishes to a topic matched by one of its ``publish`` filters, and subscribes to a
filter *covered* by one of its ``subscribe`` filters (``filter_covers``: every topic the requested
filter can match, the allowed one matches too), so no per-message check is needed on delivery.
Nothing but the agent touches a ``$`` topic (``$baetyl/broker/spool`` is the agent's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from broker.acl import filter_matches, valid_filter, valid_topic

__all__ = ["NodePrincipal", "NodeRole", "filter_covers", "may_publish", "may_subscribe"]


class NodeRole(StrEnum):
    DEVICE = "device"
    AGENT = "agent"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class NodePrincipal:
    """The party behind a node broker connection.

    Two connections of one device are the same principal (a persistent session resumes across
    credentials); the credential used is kept beside, to cut the connection when it is withdrawn.
    """

    role: NodeRole
    name: str  # the device name, the node id for the agent, "local"
    serial: str | None = field(default=None, compare=False)  # certificate serial (hex)
    password_hash: str | None = field(default=None, compare=False)  # the hash it verified against
    not_after: datetime | None = field(default=None, compare=False)  # its certificate's expiry


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic ``requested`` can match is matched by ``allowed`` (MQTT 3.1.1 rules,
    including that a wildcard first level never matches a ``$`` topic)."""
    if not valid_filter(allowed) or not valid_filter(requested):
        return False
    a_levels, r_levels = allowed.split("/"), requested.split("/")
    if a_levels[0] in ("+", "#") and r_levels[0] not in ("+", "#") and r_levels[0].startswith("$"):
        return False  # requested matches $ topics, a leading wildcard never does
    for index, r_level in enumerate(r_levels):
        if index >= len(a_levels):
            return False  # requested goes deeper than allowed can
        a_level = a_levels[index]
        if a_level == "#":
            return True
        if r_level == "#":
            # "#" matches its parent level too, except as the first level (a topic has one):
            # there "+/#" matches every topic "#" does.
            return index == 0 and a_levels[:2] == ["+", "#"]
        if r_level == "+":
            if a_level != "+":
                return False
        elif a_level not in ("+", r_level):
            return False
    rest = a_levels[len(r_levels) :]
    # "a/#" matches "a" too (# matches its parent level).
    return not rest or rest == ["#"]


def may_publish(principal: NodePrincipal, topic: str, publish: tuple[str, ...]) -> bool:
    """``publish`` is the device's filters (ignored for the agent and local clients)."""
    if not valid_topic(topic):
        return False
    if principal.role is NodeRole.AGENT:
        return True
    if topic.startswith("$"):
        return False
    if principal.role is NodeRole.LOCAL:
        return True
    return any(filter_matches(allowed, topic) for allowed in publish)


def may_subscribe(principal: NodePrincipal, topic_filter: str, subscribe: tuple[str, ...]) -> bool:
    """``subscribe`` is the device's filters (ignored for the agent and local clients)."""
    if not valid_filter(topic_filter):
        return False
    if principal.role is NodeRole.AGENT:
        return True
    if topic_filter.startswith("$"):
        return False
    if principal.role is NodeRole.LOCAL:
        return True
    return any(filter_covers(allowed, topic_filter) for allowed in subscribe)

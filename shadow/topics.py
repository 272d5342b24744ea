"""The ``$baetyl/node/<id>/...`` topics: building and parsing them.

A node id is one topic level, exactly the identity in the node's certificate (``<ns>.<name>``).
The broker's ACL (``broker.acl``: ``NODE_UPSTREAM``, ``NODE_DOWNSTREAM``) names the same channels;
it cannot import this module, nor can this pure module (the edge's) import the broker, so
``tests/shadow/test_topics.py`` ties the two.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "DOWN",
    "DOWNSTREAM",
    "PREFIX",
    "PRESENCE",
    "UP",
    "UPSTREAM",
    "Channel",
    "downlink",
    "parse",
    "parse_data",
    "subscription_filter",
    "topic",
    "uplink",
    "valid_node_id",
]

PREFIX = "$baetyl/node/"
MAX_NODE_ID_LENGTH = 255


class Channel(StrEnum):
    """What follows ``$baetyl/node/<id>/``."""

    DESIRE = "desire"
    DESIRE_GET = "desire/get"
    DESIRE_REJECTED = "desire/rejected"
    DELTA = "delta"
    REPORT = "report"
    REPORT_ACCEPTED = "report/accepted"
    REPORT_REJECTED = "report/rejected"
    RESOURCE_GET = "resource/get"
    RESOURCE = "resource"
    RESOURCE_REJECTED = "resource/rejected"


UPSTREAM = (Channel.REPORT, Channel.DESIRE_GET, Channel.RESOURCE_GET)
# A node's own presence (``{"online": ..., "session": ...}``, retained, and its Last Will): how
# cloud replicas on an external broker learn who is online. Not a shadow request.
PRESENCE = "presence"
DOWNSTREAM = tuple(channel for channel in Channel if channel not in UPSTREAM)
# The node's data plane (routes, PROTOCOL.md "Device data"): what a node's routes send up arrives on
# ``$baetyl/node/<id>/up/<rest>``; what services send the node goes on ``.../down/<rest>``. Not
# shadow requests: the shadow service ignores both.
UP = "up"
DOWN = "down"
_CHANNELS = {channel.value: channel for channel in Channel}


def valid_node_id(node_id: str) -> bool:
    """One non-empty topic level without wildcards or NUL, at most 255 characters."""
    return (
        0 < len(node_id) <= MAX_NODE_ID_LENGTH
        and "/" not in node_id
        and "+" not in node_id
        and "#" not in node_id
        and "\x00" not in node_id
    )


def topic(node_id: str, channel: Channel) -> str:
    """``$baetyl/node/<node_id>/<channel>``."""
    if not valid_node_id(node_id):
        raise ValueError(f"{node_id!r} is not a node id: use one topic level like 'acme.gw-1'.")
    return f"{PREFIX}{node_id}/{channel.value}"


def subscription_filter(channel: Channel) -> str:
    """The filter matching ``channel`` of every node: ``$baetyl/node/+/<channel>``."""
    return f"{PREFIX}+/{channel.value}"


def parse(name: str) -> tuple[str, Channel] | None:
    """``(node_id, channel)`` of a ``$baetyl/node/...`` topic, or None if it is not one."""
    if not name.startswith(PREFIX):
        return None
    node_id, sep, rest = name[len(PREFIX) :].partition("/")
    channel = _CHANNELS.get(rest)
    if not sep or channel is None or not valid_node_id(node_id):
        return None
    return node_id, channel


def _data_topic(node_id: str, direction: str, rest: str) -> str:
    if not valid_node_id(node_id):
        raise ValueError(f"{node_id!r} is not a node id: use one topic level like 'acme.gw-1'.")
    if not rest or rest.startswith("/"):
        raise ValueError(f"{rest!r} is not a topic under {direction}/: give at least one level.")
    return f"{PREFIX}{node_id}/{direction}/{rest}"


def uplink(node_id: str, rest: str) -> str:
    """``$baetyl/node/<node_id>/up/<rest>``: where a route's cloud target lands."""
    return _data_topic(node_id, UP, rest)


def downlink(node_id: str, rest: str = "#") -> str:
    """``$baetyl/node/<node_id>/down/<rest>`` (a filter with the default ``#``)."""
    return _data_topic(node_id, DOWN, rest)


def parse_data(name: str) -> tuple[str, str, str] | None:
    """``(node_id, "up" | "down", rest)`` of a data-plane topic, or None if it is not one."""
    if not name.startswith(PREFIX):
        return None
    node_id, sep, tail = name[len(PREFIX) :].partition("/")
    direction, sep2, rest = tail.partition("/")
    if not sep or not sep2 or not rest or direction not in (UP, DOWN) or not valid_node_id(node_id):
        return None
    return node_id, direction, rest

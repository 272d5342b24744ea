"""MQTT 3.1.1 topic filters: checked and matched, for routes' sources.

The edge cannot import the broker's matcher (``broker.acl.filter_matches``) nor does shadow's pure
top level hold one, so this is the edge's; ``tests/edge/dataplane/test_filters.py`` compares the
two on generated topics and filters.
"""

from __future__ import annotations

__all__ = ["MAX_TOPIC_BYTES", "matches", "valid_filter", "valid_topic"]

MAX_TOPIC_BYTES = 65535  # an MQTT string's length is two bytes


def valid_filter(topic_filter: str) -> bool:
    """Non-empty, no NUL; ``+`` and ``#`` fill whole levels and ``#`` comes last."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    if len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            return False
        if level == "#" and index != len(levels) - 1:
            return False
    return True


def valid_topic(topic: str) -> bool:
    """A topic name: non-empty, no wildcard, no NUL, at most 65535 bytes."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and len(topic.encode()) <= MAX_TOPIC_BYTES
    )


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (wildcards never match a ``$`` topic's first
    level [MQTT-4.7.2-1]; ``a/#`` also matches ``a``)."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic  # the common case, without splitting
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(levels) == len(topic_levels)

"""The ACL as pure functions: who may publish, subscribe to and receive which topic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import (
    NODE_DOWNSTREAM,
    NODE_UPSTREAM,
    Principal,
    Role,
    client_id_allowed,
    filter_matches,
    may_publish,
    may_receive,
    may_subscribe,
    node_prefix,
    valid_filter,
    valid_topic,
)
from certs import Identity

NODE = Principal(Role.NODE, "default.node-a")
OTHER = "default.node-b"
OPERATOR = Principal(Role.OPERATOR, "operator:dbg")
SERVICE = Principal(Role.SERVICE, "service:shadow")
LOCAL = Principal.local()
OWN = node_prefix(NODE.name)
THEIRS = node_prefix(OTHER)


def test_principal_from_identity() -> None:
    """A certificate identity maps to a role and the name the ACL keys on (the CN)."""
    assert Principal.from_identity(Identity.node("default", "node-a")) == NODE
    assert Principal.from_identity(Identity.operator("dbg")) == OPERATOR
    assert Principal.from_identity(Identity.service("shadow")) == SERVICE
    # A device belongs on its node's broker, never on the cloud's.
    assert Principal.from_identity(Identity.device("default", "node-a", "t-1")) is None
    assert Principal.local() == Principal(Role.LOCAL, "local")


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        *[(NODE, OWN + up, True) for up in NODE_UPSTREAM],
        *[(NODE, OWN + down, False) for down in NODE_DOWNSTREAM],
        *[(NODE, THEIRS + up, False) for up in NODE_UPSTREAM],
        (NODE, OWN + "report/extra", False),
        (NODE, OWN + "other", False),
        (NODE, "plain/topic", False),
        (NODE, "$SYS/broker", False),
        (OPERATOR, OWN + "report", False),
        (OPERATOR, "plain/topic", False),
        (SERVICE, OWN + "desire", True),
        (SERVICE, THEIRS + "report", True),
        (SERVICE, "plain/topic", True),
        (SERVICE, "with/+/wildcard", False),
        (SERVICE, "", False),
        (LOCAL, "plain/topic", True),
        (LOCAL, OWN + "desire", False),
        (LOCAL, "$SYS/x", False),
        (LOCAL, "nul\x00byte", False),
    ],
)
def test_may_publish(principal: Principal, topic: str, allowed: bool) -> None:
    """Nodes publish only upstream in their own tree, operators never, local never to ``$``."""
    assert may_publish(principal, topic) is allowed


@pytest.mark.parametrize(
    ("principal", "topic_filter", "allowed"),
    [
        *[(NODE, OWN + down, True) for down in NODE_DOWNSTREAM],
        *[(NODE, OWN + up, False) for up in NODE_UPSTREAM],
        (NODE, OWN + "report/+", True),
        (NODE, OWN + "resource", True),
        (NODE, OWN + "+", False),
        (NODE, OWN + "#", False),
        (NODE, OWN + "desire/#", False),
        (NODE, OWN + "+/get", False),
        (NODE, OWN, False),
        (NODE, OWN[:-1], False),
        (NODE, THEIRS + "desire", False),
        (NODE, "$baetyl/node/+/desire", False),
        (NODE, "#", False),
        (NODE, "plain/topic", False),
        (NODE, OWN + "desi+", False),
        (OPERATOR, "$baetyl/#", True),
        (OPERATOR, "#", True),
        (SERVICE, "$baetyl/node/+/report", True),
        (SERVICE, "a/#/b", False),
        (LOCAL, "sensors/#", True),
        (LOCAL, "#", True),
        (LOCAL, "$baetyl/#", False),
        (LOCAL, "$SYS/#", False),
    ],
)
def test_may_subscribe(principal: Principal, topic_filter: str, allowed: bool) -> None:
    """Nodes subscribe only to filters that match nothing but their own downstream topics."""
    assert may_subscribe(principal, topic_filter) is allowed


@pytest.mark.parametrize(
    ("principal", "topic", "allowed"),
    [
        *[(NODE, OWN + down, True) for down in NODE_DOWNSTREAM],
        *[(NODE, OWN + up, False) for up in NODE_UPSTREAM],
        (NODE, THEIRS + "desire", False),
        (NODE, "plain/topic", False),
        (OPERATOR, THEIRS + "report", True),
        *[(OPERATOR, THEIRS + down, down != "resource") for down in NODE_DOWNSTREAM],
        (SERVICE, THEIRS + "report", True),
        (SERVICE, THEIRS + "resource", True),
        (LOCAL, "plain/topic", True),
        (LOCAL, OWN + "desire", False),
    ],
)
def test_may_receive(principal: Principal, topic: str, allowed: bool) -> None:
    """A node receives only its own downstream topics; an operator all but secret answers."""
    assert may_receive(principal, topic) is allowed


@pytest.mark.parametrize(
    ("principal", "client_id", "allowed"),
    [
        (NODE, "default.node-a", True),
        (NODE, "default.node-a/x", False),
        (NODE, OTHER, False),
        (NODE, "", False),
        (OPERATOR, "operator:dbg", True),
        (OPERATOR, "operator:dbg/laptop", True),
        (OPERATOR, "operator:dbg/", False),
        (OPERATOR, "operator:dbgx", False),
        (SERVICE, "service:shadow/replica-1", True),
        (SERVICE, "default.node-a", False),
        (LOCAL, "local-tool", True),
        (LOCAL, "tool/with/slashes", True),
        (LOCAL, "", False),
        (LOCAL, "default.node-a", False),
        (LOCAL, "operator:dbg", False),
        (LOCAL, "service:shadow/x", False),
    ],
)
def test_client_id_allowed(principal: Principal, client_id: str, allowed: bool) -> None:
    """Nodes use their node id; operators and services their CN (or CN/suffix); local clients
    anything that no certificate identity could use."""
    assert client_id_allowed(principal, client_id) is allowed


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("a/b", True),
        ("#", True),
        ("+", True),
        ("a/+/c", True),
        ("a/#", True),
        ("/", True),
        ("", False),
        ("a/#/c", False),
        ("a#", False),
        ("a/b+", False),
        ("nul\x00", False),
    ],
)
def test_valid_filter(topic_filter: str, valid: bool) -> None:
    """Wildcards fill whole levels and ``#`` comes last."""
    assert valid_filter(topic_filter) is valid


@pytest.mark.parametrize(
    ("topic", "valid"),
    [("a/b", True), ("/", True), ("$baetyl/x", True), ("", False), ("a/+", False), ("#", False)],
)
def test_valid_topic(topic: str, valid: bool) -> None:
    """A topic name is non-empty and has no wildcard or NUL."""
    assert valid_topic(topic) is valid


# -- filter_matches, by property -------------------------------------------------------------

LEVEL = st.text(
    alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]),
    max_size=4,
)
TOPIC = st.lists(LEVEL, min_size=1, max_size=6).map("/".join).filter(valid_topic)
PLAIN_TOPIC = TOPIC.filter(lambda t: not t.startswith("$"))
DOLLAR_TOPIC = TOPIC.map(lambda t: "$" + t)


@given(TOPIC)
def test_a_topic_matches_itself(topic: str) -> None:
    """Every topic name, used as a filter, matches itself."""
    assert filter_matches(topic, topic)


@given(PLAIN_TOPIC)
def test_hash_matches_every_non_dollar_topic(topic: str) -> None:
    """``#`` matches every topic that does not start with ``$``."""
    assert filter_matches("#", topic)


@given(TOPIC, st.data())
def test_a_plus_in_place_of_any_level_still_matches(topic: str, data: st.DataObject) -> None:
    """Replacing any one level (except a leading ``$`` one) with ``+`` still matches."""
    levels = topic.split("/")
    index = data.draw(st.integers(0, len(levels) - 1))
    if index == 0 and topic.startswith("$"):
        return
    levels[index] = "+"
    assert filter_matches("/".join(levels), topic)


@given(TOPIC, st.data())
def test_a_hash_in_place_of_any_tail_still_matches(topic: str, data: st.DataObject) -> None:
    """Replacing any tail of levels (also none: ``a/#`` matches ``a``) with ``#`` still matches."""
    levels = topic.split("/")
    keep = data.draw(st.integers(1 if topic.startswith("$") else 0, len(levels)))
    assert filter_matches("/".join([*levels[:keep], "#"]), topic)


@given(DOLLAR_TOPIC, st.sampled_from(["#", "+", "+/#", "+/+", "+/+/+"]))
def test_dollar_topics_never_match_a_leading_wildcard(topic: str, topic_filter: str) -> None:
    """Filters starting with a wildcard never match ``$`` topics [MQTT-4.7.2-1]."""
    assert not filter_matches(topic_filter, topic)


@given(TOPIC, TOPIC)
def test_distinct_topics_do_not_match_each_other(first: str, second: str) -> None:
    """A filter without wildcards matches exactly one topic name."""
    assert filter_matches(first, second) is (first == second)


@given(TOPIC, LEVEL)
def test_a_filter_with_an_extra_level_does_not_match(topic: str, extra: str) -> None:
    """``a/b/c`` and ``a/b/+`` do not match ``a/b``."""
    assert not filter_matches(f"{topic}/{extra}", topic)
    assert not filter_matches(f"{topic}/+", topic)


def test_a_node_sends_on_its_own_uplink_only() -> None:
    """A node's routes publish under ``up/``; never another node's, never ``up`` alone."""
    assert may_publish(NODE, OWN + "up/telemetry/thermo-1")
    assert may_publish(NODE, OWN + "up/x")
    assert not may_publish(NODE, OWN + "up")
    assert not may_publish(NODE, OWN + "up/")
    assert not may_publish(NODE, THEIRS + "up/telemetry")
    assert not may_publish(NODE, OWN + "down/cmd")  # the downlink is the services'
    assert may_publish(SERVICE, OWN + "down/cmd")
    assert not may_publish(OPERATOR, OWN + "down/cmd")


@pytest.mark.parametrize(
    ("suffix", "allowed"),
    [
        ("down/#", True),
        ("down/cmd/+", True),
        ("up/#", False),
        ("up/x", False),
        ("+/x", True),  # may match its own up/x: its own data, never another node's
        ("+/rejected", True),  # the answers it waits for
        ("+/#", False),  # matches report
        ("#", False),
        ("up", True),  # matches the topic "up" alone, which nobody may publish
        ("+", False),  # matches report
    ],
)
def test_a_node_cannot_subscribe_to_its_uplink(suffix: str, allowed: bool) -> None:
    """What a node sends up is for the cloud's services and operators: a node may not name its
    uplink; a wildcard that may also match it brings the node its own data at most."""
    assert may_subscribe(NODE, OWN + suffix) is allowed


def test_the_uplink_and_downlink_are_received_by_the_right_parties() -> None:
    """Operators and services read a node's uplink (mosquitto_sub works); the node its downlink."""
    assert may_receive(OPERATOR, OWN + "up/telemetry")
    assert may_receive(SERVICE, OWN + "up/telemetry")
    assert may_receive(NODE, OWN + "down/cmd")
    assert not may_receive(NODE, OWN + "up/telemetry")
    assert not may_receive(NODE, THEIRS + "down/cmd")

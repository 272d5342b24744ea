"""Topics and envelopes: what a node may send is parsed strictly, answers have their shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadow import (
    BadRequest,
    Channel,
    Conflict,
    DesiredFollower,
    GetRequest,
    ReportRequest,
    ResourceKind,
    ResourceRequest,
    Section,
    TooManyRequests,
    parse,
    parse_accepted,
    parse_delta,
    parse_desire,
    parse_rejected,
    topic,
    valid_node_id,
)
from shadow.envelopes import (
    accepted,
    client_token_of,
    delta_message,
    desire_message,
    get_message,
    parse_get,
    parse_report,
    parse_resource_get,
    rejected,
    report_message,
    resource_get_message,
)

node_ids = st.text(
    st.characters(codec="utf-8", exclude_characters="/+#\x00"),
    min_size=1,
    max_size=40,
)


@given(node_ids, st.sampled_from(list(Channel)))
def test_topic_and_parse_round_trip(node_id: str, channel: Channel) -> None:
    """Every topic built for a valid node id parses back to that id and channel."""
    assert parse(topic(node_id, channel)) == (node_id, channel)


@pytest.mark.parametrize(
    "name",
    [
        "$baetyl/node/a.b",
        "$baetyl/node//report",
        "$baetyl/node/a.b/reports",
        "$baetyl/node/a.b/report/extra",
        "baetyl/node/a.b/report",
        "$baetyl/node/a+b/report",
    ],
)
def test_parse_refuses_what_is_not_a_shadow_topic(name: str) -> None:
    """Topics outside the shadow's table parse to None."""
    assert parse(name) is None


@pytest.mark.parametrize("node_id", ["", "a/b", "a+", "#", "x" * 256, "a\x00"])
def test_invalid_node_ids_are_refused(node_id: str) -> None:
    """A node id is one topic level without wildcards, at most 255 characters."""
    assert not valid_node_id(node_id)
    with pytest.raises(ValueError, match="not a node id"):
        topic(node_id, Channel.REPORT)


def test_report_is_parsed_with_its_optional_fields() -> None:
    """A report carries reported, and optionally a token and the version it is based on."""
    parsed = parse_report({"clientToken": "t", "version": 3, "reported": {"a": 1}})
    assert (parsed.client_token, parsed.version, parsed.reported) == ("t", 3, {"a": 1})
    assert parse_report({"reported": {}}).version is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "reported"),
        ({"reported": None}, "reported"),
        ({"reported": {}, "version": -1}, "version"),
        ({"reported": {}, "version": True}, "version"),
        ({"reported": {}, "version": 2**63}, "version"),
        ({"reported": {}, "clientToken": ""}, "clientToken"),
        ({"reported": {}, "clientToken": "x" * 65}, "clientToken"),
        ({"reported": {}, "clientToken": "a\nb"}, "clientToken"),
        ({"reported": {}, "clientToken": 5}, "clientToken"),
        ({"reported": {}, "state": {}}, "unknown field 'state'"),
    ],
)
def test_bad_reports_name_the_field(body: dict[str, Any], words: str) -> None:
    """Each malformed report raises BadRequest naming what is wrong."""
    with pytest.raises(BadRequest, match=words):
        parse_report(body)


def test_the_token_is_echoed_even_when_the_rest_is_bad() -> None:
    """client_token_of reads a valid token whatever else the request holds."""
    assert client_token_of({"clientToken": "t", "reported": 7}) == "t"
    assert client_token_of({"clientToken": 7}) is None
    assert client_token_of([1]) is None


def test_get_and_resource_requests() -> None:
    """desire/get takes only a token; resource/get needs a known kind, a name and a version."""
    assert parse_get({}).client_token is None
    with pytest.raises(BadRequest, match="unknown field"):
        parse_get({"what": 1})
    wanted = parse_resource_get({"kind": "config", "name": "app-conf.v2", "version": "17"})
    assert (wanted.kind, wanted.name, wanted.version) == ("config", "app-conf.v2", "17")
    for bad in (
        {"kind": "pod", "name": "a", "version": "1"},
        {"kind": "app", "name": "Upper", "version": "1"},
        {"kind": "app", "name": "a", "version": ""},
        {"kind": "app", "name": "a"},
    ):
        with pytest.raises(BadRequest):
            parse_resource_get(bad)


def test_the_edges_requests_parse_back() -> None:
    """Every request the edge builds is parsed by the function the cloud uses, token and all."""
    for request in (ReportRequest({"a": 1}), ReportRequest({"a": {"b": None}}, "r-1", 7)):
        assert parse_report(report_message(request)) == request
    for get in (GetRequest(), GetRequest("get-1")):
        assert parse_get(get_message(get)) == get
    wanted = ResourceRequest(ResourceKind.CERTIFICATE, "plc", "3", "res-1")
    assert parse_resource_get(resource_get_message(wanted)) == wanted
    assert "clientToken" not in resource_get_message(ResourceRequest(ResourceKind.APP, "a", "1"))


def test_answers_parse_back() -> None:
    """Every answer the cloud builds is parsed by the function the edge uses."""
    section = Section({"apps": []}, {}, 4)
    assert parse_desire(desire_message(section, 10, "t")).version == 4
    assert parse_desire(desire_message(section, 10)).client_token is None
    assert parse_accepted(accepted("t", 5, 10)).version == 5
    assert parse_delta(delta_message(4, {"a": 1}, 10)).delta == {"a": 1}
    conflict = parse_rejected(rejected(Conflict("stale", current_version=9), "t", 10))
    assert (conflict.code, conflict.version, conflict.client_token) == (409, 9, "t")
    limited = parse_rejected(rejected(TooManyRequests("slow down"), None, 10))
    assert (limited.code, limited.version, limited.client_token) == (429, None, None)


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=60))
def test_follower_never_goes_back(versions: list[int]) -> None:
    """Whatever order desire messages arrive in, the versions taken only ever increase."""
    follower = DesiredFollower()
    taken = []
    for version in versions:
        if follower.offer(parse_desire({"version": version, "desired": {}, "timestamp": 0})):
            taken.append(version)
    assert taken == sorted(set(taken))
    assert follower.version == max([0, *versions])

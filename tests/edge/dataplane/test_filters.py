"""The edge's topic-filter matcher agrees with the broker's (which the edge cannot import)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.acl import filter_matches, valid_filter, valid_topic
from edge.dataplane.filters import matches
from edge.dataplane.filters import valid_filter as edge_valid_filter
from edge.dataplane.filters import valid_topic as edge_valid_topic

# Small alphabets so that generated filters and topics often share levels (and so match).
LEVEL = st.sampled_from(["", "a", "b", "$x", "$baetyl", "é", "a b"])
TOPIC = st.lists(LEVEL, min_size=1, max_size=5).map("/".join).filter(valid_topic)
FILTER_LEVEL = st.one_of(LEVEL, st.just("+"))
FILTER = st.builds(
    lambda levels, tail: "/".join(levels + (["#"] if tail else [])),
    st.lists(FILTER_LEVEL, min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@given(FILTER, TOPIC)
def test_the_edge_matches_as_the_broker_does(topic_filter: str, topic: str) -> None:
    assert matches(topic_filter, topic) is filter_matches(topic_filter, topic)


@given(st.text(alphabet="ab/+#$\x00", max_size=8))
def test_the_edge_checks_filters_and_topics_as_the_broker_does(text: str) -> None:
    assert edge_valid_filter(text) is valid_filter(text)
    assert edge_valid_topic(text) is valid_topic(text)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("devices/+/telemetry", "devices/t-1/telemetry", True),
        ("devices/+/telemetry", "devices/t-1/status", False),
        ("devices/#", "devices", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/+", "a/b/c", False),
        ("a", "a", True),
        ("+", "", True),
    ],
)
def test_known_cases(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected
    assert filter_matches(topic_filter, topic) is expected

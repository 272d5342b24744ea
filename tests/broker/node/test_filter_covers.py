"""``filter_covers(allowed, requested)``: every topic ``requested`` matches, ``allowed`` matches.

Checked against brute force: over a universe of topics deep enough for the filters drawn, the
requested filter is covered exactly when no topic it matches escapes the allowed one.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.acl import filter_matches, valid_filter
from broker.node.acl import filter_covers

LEVELS = ["a", "b", "", "$x"]
FILTER_LEVELS = [*LEVELS, "+"]
MAX_DEPTH = 3
# Topics one level deeper than any filter, so "#" is told from a fixed depth.
UNIVERSE = [
    "/".join(levels)
    for depth in range(1, MAX_DEPTH + 2)
    for levels in itertools.product(LEVELS, repeat=depth)
]


@st.composite
def filters(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, MAX_DEPTH))
    levels = [draw(st.sampled_from(FILTER_LEVELS)) for _ in range(depth)]
    if draw(st.booleans()):
        levels[-1] = "#"
    return "/".join(levels)


def covered_by_brute_force(allowed: str, requested: str) -> bool:
    return all(filter_matches(allowed, t) for t in UNIVERSE if filter_matches(requested, t))


@settings(max_examples=400, deadline=None)
@given(filters(), filters())
def test_filter_covers_is_exact(allowed: str, requested: str) -> None:
    if not (valid_filter(allowed) and valid_filter(requested)):  # "" is no filter
        assert not filter_covers(allowed, requested)
        return
    assert filter_covers(allowed, requested) == covered_by_brute_force(allowed, requested)


def test_examples() -> None:
    assert filter_covers("devices/d1/#", "devices/d1/commands/+")
    assert filter_covers("devices/d1/#", "devices/d1")  # "#" matches its parent level
    assert filter_covers("devices/+/x", "devices/d1/x")
    assert not filter_covers("devices/d1/#", "devices/#")
    assert not filter_covers("devices/d1/+", "devices/d1/#")
    assert not filter_covers("devices/+/x", "devices/+/+")
    assert not filter_covers("#", "$baetyl/broker/spool")  # a leading wildcard never matches $
    assert not filter_covers("devices/#", "not a/valid/#/filter")

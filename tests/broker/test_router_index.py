"""The subscription index agrees with a plain reference matcher on every topic and filter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.router import SubscriptionIndex


def reference_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7, written as directly as possible."""
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


LEVEL = st.sampled_from(["a", "b", "c", "$SYS", "$baetyl", "node", "", "x y"])
TOPIC = st.lists(LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVEL, st.just("+")), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"


@settings(max_examples=300)
@given(st.lists(filters(), min_size=1, max_size=12), st.lists(TOPIC, min_size=1, max_size=8))
def test_index_matches_like_the_reference(filter_list: list[str], topics: list[str]) -> None:
    """For any set of filters, match() returns exactly the filters the reference accepts."""
    index: SubscriptionIndex[int, str] = SubscriptionIndex()
    for key, topic_filter in enumerate(filter_list):
        index.add(topic_filter, key, topic_filter, 1)
    for topic in topics:
        got = sorted((f, s.key) for f, s in index.match(topic))
        want = sorted((f, key) for key, f in enumerate(filter_list) if reference_matches(f, topic))
        assert got == want, topic


@settings(max_examples=200)
@given(st.lists(st.tuples(filters(), st.integers(0, 3)), min_size=1, max_size=15), TOPIC)
def test_removal_leaves_exactly_the_rest(subs: list[tuple[str, int]], topic: str) -> None:
    """Removing subscriptions (one by one or a whole subscriber) leaves only the others matching."""
    index: SubscriptionIndex[int, None] = SubscriptionIndex()
    for topic_filter, key in subs:
        index.add(topic_filter, key, None, 0)
    index.remove_all(0)
    removed_one = subs[0]
    index.remove(*removed_one)
    remaining = {(f, k) for f, k in subs if k != 0 and (f, k) != removed_one}
    got = sorted((f, s.key) for f, s in index.match(topic))
    assert got == sorted((f, k) for f, k in remaining if reference_matches(f, topic))
    assert len(index) == len(remaining)


def test_resubscribe_replaces_qos_and_counts_once() -> None:
    """Subscribing to the same filter again replaces the QoS instead of adding a second copy."""
    index: SubscriptionIndex[str, None] = SubscriptionIndex()
    assert index.add("a/+", "c1", None, 0) is True
    assert index.add("a/+", "c1", None, 1) is False
    assert [(f, s.qos) for f, s in index.match("a/b")] == [("a/+", 1)]


def test_dollar_topics_and_parent_of_hash() -> None:
    """'#' and '+' never match $ topics at the first level; 'a/#' matches 'a' itself."""
    index: SubscriptionIndex[str, None] = SubscriptionIndex()
    for key, topic_filter in enumerate(["#", "+/node/x", "$baetyl/#", "a/#"]):
        index.add(topic_filter, str(key), None, 1)
    assert [f for f, _ in index.match("$baetyl/node/x")] == ["$baetyl/#"]
    assert sorted(f for f, _ in index.match("a")) == ["#", "a/#"]


def test_removing_unknown_subscriptions_is_harmless() -> None:
    """Removing what was never there returns False and changes nothing."""
    index: SubscriptionIndex[str, None] = SubscriptionIndex()
    index.add("a/b", "c1", None, 1)
    assert index.remove("a/c", "c1") is False
    assert index.remove("a/b", "c2") is False
    assert index.remove_all("nobody") == 0
    assert [s.key for _, s in index.match("a/b")] == ["c1"]


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove", "match"]), filters(), st.integers(0, 2), TOPIC),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300)
@given(OPS)
def test_matches_stay_right_while_subscriptions_change(
    ops: list[tuple[str, str, int, str]],
) -> None:
    """Matching, subscribing and unsubscribing interleaved: match() never returns a stale set."""
    index: SubscriptionIndex[int, None] = SubscriptionIndex()
    live: set[tuple[str, int]] = set()
    for op, topic_filter, key, topic in ops:
        if op == "add":
            index.add(topic_filter, key, None, 1)
            live.add((topic_filter, key))
        elif op == "remove":
            index.remove(topic_filter, key)
            live.discard((topic_filter, key))
        got = sorted((f, s.key) for f, s in index.match(topic))
        want = sorted((f, k) for f, k in live if reference_matches(f, topic))
        assert got == want


def _characters_held(index: SubscriptionIndex[int, None]) -> int:
    """Characters of every distinct string reachable from the index's own objects."""
    seen: set[int] = set()
    total = 0
    stack: list[object] = list(vars(index).values())
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "__slots__"):
            stack.extend(getattr(item, name) for name in item.__slots__ if hasattr(item, name))
    return total


def test_storage_is_linear_in_the_filter_length() -> None:
    """A filter of n levels is stored in O(n) characters, not a copy of its path per level.

    Pins the hole found from outside: each trie node kept its full path, so a 64 KiB filter of
    one-letter levels stored about a gigabyte of prefixes.
    """
    index: SubscriptionIndex[int, None] = SubscriptionIndex()
    deep = "abc/" * 199 + "+"  # 200 levels, the most broker.max_topic_levels allows
    index.add(deep, 1, None, 1)
    assert [f for f, _ in index.match("abc/" * 199 + "d")] == [deep]
    assert _characters_held(index) <= 3 * len(deep)  # with per-level paths: ~100 x len(deep)
    index.remove_all(1)
    assert _characters_held(index) == 0

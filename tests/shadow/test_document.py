"""The shadow document: validation, RFC 7386 merge, delta, metadata stamps and sections."""

from __future__ import annotations

import collections
import copy
import enum
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.document import (
    EMPTY,
    JSONObject,
    Limits,
    Section,
    delta,
    encoded_size,
    merge,
    stamp,
    validate,
)
from shadow.errors import BadRequest, TooLarge

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BIG = Limits(max_bytes=1 << 20, max_depth=64)
# Generating nested documents is slow; 50 small examples per property keep the file at seconds.
FEW = settings(max_examples=50)

# Few key names, so that patches and states collide; "timestamp" exercises the metadata rule.
KEYS = st.sampled_from(["a", "b", "c", "timestamp"])
SCALARS = (
    st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.sampled_from([0.0, -0.5, 1.0, 1e300])
    | st.text(alphabet="xyé", max_size=3)
)


def values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """JSON values built from ``scalars``, kept small."""
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3)
        ),
        max_leaves=6,
    )


OBJECTS = st.dictionaries(KEYS, values(SCALARS | st.none()), max_size=4)
OBJECTS_WITHOUT_NULLS = st.dictionaries(KEYS, values(SCALARS), max_size=4)


def json_equal(a: object, b: object) -> bool:
    """Equal as JSON values: true is not 1, 1 and 1.0 are one number, containers compared deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(json_equal(a[key], b[key]) for key in a)
        )
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


def covers(have: object, want: object) -> bool:
    """``have`` holds everything ``want`` holds (its objects may have more keys)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            key in have and covers(have[key], value) for key, value in want.items()
        )
    return json_equal(have, want)


def shape(state: JSONObject) -> dict[str, Any]:
    """The state with every leaf replaced by a marker."""
    return {
        key: shape(value) if isinstance(value, dict) else "leaf" for key, value in state.items()
    }


def metadata_shape(metadata: JSONObject) -> dict[str, Any]:
    """The metadata with every leaf entry (``{"timestamp": int}``) replaced by a marker."""
    result: dict[str, Any] = {}
    for key, value in metadata.items():
        assert isinstance(value, dict)
        if type(value.get("timestamp")) is int:
            assert list(value) == ["timestamp"]
            result[key] = "leaf"
        else:
            result[key] = metadata_shape(value)
    return result


# -- limits and validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"max_bytes": 0}, {"max_depth": -1}, {"max_key_length": 0}, {"max_depth": True}],
)
def test_limits_must_be_positive_integers(kwargs: dict[str, Any]) -> None:
    """Limits refuse zero, negative and non-integer values."""
    with pytest.raises(ValueError, match="positive integer"):
        Limits(**kwargs)


def test_encoded_size_counts_compact_utf8_bytes() -> None:
    """encoded_size is the length of compact JSON in UTF-8, non-ASCII characters unescaped."""
    assert encoded_size({"a": [1, 2], "b": "é"}) == len('{"a":[1,2],"b":"é"}'.encode())
    assert encoded_size({"a": "x"}) == 9


def test_validate_returns_the_same_object() -> None:
    """A valid object is returned as it is, not copied."""
    state = {"a": {"b": [1, 2.5, None, True, "x"]}, "c": INT64_MIN, "d": INT64_MAX}
    assert validate(state, Limits(), path="reported") is state


def test_validate_accepts_values_exactly_at_the_limits() -> None:
    """Depth, size and key length equal to their limits are allowed."""
    limits = Limits(max_bytes=20, max_depth=3, max_key_length=3)
    validate({"abc": {"b": [1]}}, limits, path="r")
    exact = {"a": "x" * 10}
    assert encoded_size(exact) == 18
    validate(exact, Limits(max_bytes=18), path="r")


def test_validate_accepts_subclasses_of_json_types() -> None:
    """Values of str, int, float, dict and list subclasses (a StrEnum, say) are JSON values."""

    class Color(enum.StrEnum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    state = {"color": Color.RED, "level": Level.HIGH, "nested": collections.OrderedDict(a=1)}
    assert validate(state, Limits(), path="r") is state
    assert encoded_size(state) == len('{"color":"red","level":3,"nested":{"a":1}}')


def test_depth_counts_the_top_object_as_one() -> None:
    """{"a": 1} is depth 1; {"a": [1]} and {"a": {}} are depth 2."""
    one = Limits(max_depth=1)
    validate({"a": 1}, one, path="r")
    deeper: JSONObject
    for deeper in ({"a": [1]}, {"a": {}}):
        with pytest.raises(BadRequest, match="nested 2 levels deep; the limit is 1"):
            validate(deeper, one, path="r")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([1], "reported must be a JSON object, not list"),
        ("x", "reported must be a JSON object, not str"),
        ({"a": {1: "x"}}, "reported.a has a key of type int"),
        ({"apps": [{}, {}, {"name": b"x"}]}, "reported.apps[2].name is a binary value"),
        ({"apps": [{"$x": 1}]}, "reported.apps[0] has the key \"$x\"; keys starting with '$'"),
        ({"a": {"": 1}}, "reported.a has an empty key"),
        ({"k" * 129: 1}, "reported has a key of 129 characters"),
        ({"a": [1, float("nan")]}, "reported.a[1] is nan, which JSON cannot represent"),
        ({"a": float("-inf")}, "reported.a is -inf"),
        ({"a": (1, 2)}, "reported.a is a tuple, which is not a JSON value"),
        ({"a": {1, 2}}, "reported.a is a set, which is not a JSON value"),
        ({"a": 2**63}, "reported.a is an integer outside the signed 64-bit range"),
        ({"a": [INT64_MIN - 1]}, "reported.a[0] is an integer outside"),
        ({"a.b": bytearray(b"x")}, 'reported["a.b"] is a binary value'),
        ({"a": {"b": {"c": {"d": 1}}}}, "reported.a.b.c is nested 4 levels deep; the limit is 3"),
        ({"a": ["\ud800"]}, "reported has a string with a lone UTF-16 surrogate"),
    ],
)
def test_validate_rejects_with_the_path(value: object, fragment: str) -> None:
    """Each kind of invalid value is a BadRequest naming where it is."""
    with pytest.raises(BadRequest) as caught:
        validate(value, Limits(max_depth=3), path="reported")
    assert fragment in caught.value.message
    assert caught.value.message.endswith(".")


def test_validate_rejects_a_state_over_max_bytes() -> None:
    """A state over max_bytes is TooLarge, naming its size and the limit."""
    with pytest.raises(TooLarge, match=r"desired is 21 bytes as compact JSON; the limit is 20"):
        validate({"a": "x" * 13}, Limits(max_bytes=20), path="desired")


def test_validate_survives_a_cycle() -> None:
    """A self-referencing dict is refused as too deep instead of recursing forever."""
    cyclic: dict[str, Any] = {}
    cyclic["a"] = cyclic
    with pytest.raises(BadRequest, match="nested 11 levels deep"):
        validate(cyclic, Limits(), path="r")


def test_validate_stops_early_on_shared_sub_objects() -> None:
    """A tiny object graph that expands to a huge document is TooLarge without walking it all."""
    node: dict[str, Any] = {str(i): i for i in range(8)}
    for _ in range(9):
        node = {str(i): node for i in range(8)}
    started = time.monotonic()
    with pytest.raises(TooLarge, match="holds more than 65536 values"):
        validate(node, Limits(), path="r")
    assert time.monotonic() - started < 2


# -- merge -------------------------------------------------------------------------------------

# RFC 7386, Appendix A: (target, patch, result), all of them.
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_follows_rfc7386_appendix_a(target: Any, patch: Any, result: Any) -> None:
    """Every RFC 7386 example holds; non-object ones are checked one level down, under a key.

    merge() takes objects, so an example whose target or patch is not an object is wrapped as
    {"x": target} / {"x": patch}; a null result then means the key is gone.
    """
    if isinstance(target, dict) and isinstance(patch, dict):
        assert merge(target, patch) == result
    wrapped = merge({"x": target}, {"x": patch})
    assert wrapped == ({} if result is None else {"x": result})


def test_merge_patch_object_onto_scalar_drops_nested_nulls() -> None:
    """An object patched onto a non-object replaces it, without the patch's nulls."""
    assert merge({"a": 1}, {"a": {"b": None, "c": {"d": None}, "e": 2}}) == {"a": {"c": {}, "e": 2}}


@FEW
@given(OBJECTS, OBJECTS)
def test_merge_is_idempotent(target: JSONObject, patch: JSONObject) -> None:
    """Applying the same patch twice gives what applying it once gives."""
    once = merge(target, patch)
    assert merge(once, patch) == once


@FEW
@given(OBJECTS, OBJECTS)
def test_merge_never_mutates_its_inputs(target: JSONObject, patch: JSONObject) -> None:
    """merge leaves the target and the patch exactly as they were."""
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    merge(target, patch)
    assert target == target_before
    assert patch == patch_before


@FEW
@given(OBJECTS)
def test_merge_with_an_empty_patch_is_a_copy(target: JSONObject) -> None:
    """An empty patch yields an equal, new object."""
    result = merge(target, {})
    assert result == target
    assert result is not target


@FEW
@given(OBJECTS)
def test_merge_result_has_no_nulls_from_the_patch(patch: JSONObject) -> None:
    """Merging onto an empty object leaves no null as an object value."""

    def has_null_member(value: object) -> bool:
        return isinstance(value, dict) and any(
            v is None or has_null_member(v) for v in value.values()
        )

    assert not has_null_member(merge({}, patch))


# -- delta -------------------------------------------------------------------------------------


def test_delta_examples() -> None:
    """The delta holds what differs, recursing into objects and ignoring reported-only keys."""
    desired = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": {"g": 1}, "h": {}}
    reported = {"a": 1, "b": {"c": 2, "d": 4}, "e": [1, 2, 3], "f": {"g": 1}, "z": 9}
    assert delta(desired, reported) == {"b": {"d": 3}, "e": [1, 2], "h": {}}


def test_delta_tells_true_from_one() -> None:
    """JSON true is not the number 1, at any depth; 1 and 1.0 are the same number."""
    assert delta({"a": True}, {"a": 1}) == {"a": True}
    assert delta({"a": 1}, {"a": True}) == {"a": 1}
    assert delta({"a": [0]}, {"a": [False]}) == {"a": [0]}
    assert delta({"a": [{"b": True}]}, {"a": [{"b": 1}]}) == {"a": [{"b": True}]}
    assert delta({"a": 1}, {"a": 1.0}) == {}
    assert delta({"a": "1"}, {"a": 1}) == {"a": "1"}
    assert delta({"a": [1]}, {"a": {"0": 1}}) == {"a": [1]}


@FEW
@given(OBJECTS_WITHOUT_NULLS)
def test_delta_of_a_state_with_itself_is_empty(state: JSONObject) -> None:
    """A state has no delta against itself or against a copy of itself."""
    assert delta(state, state) == {}
    assert delta(state, copy.deepcopy(state)) == {}


@FEW
@given(OBJECTS_WITHOUT_NULLS, OBJECTS_WITHOUT_NULLS)
def test_applying_the_delta_reaches_desired(desired: JSONObject, reported: JSONObject) -> None:
    """Merging the delta into reported makes it match desired on the delta's keys, leaving none."""
    difference = delta(desired, reported)
    updated = merge(reported, difference)
    for key in difference:
        assert covers(updated[key], desired[key])
    assert delta(desired, updated) == {}


@FEW
@given(OBJECTS_WITHOUT_NULLS, OBJECTS_WITHOUT_NULLS)
def test_delta_keys_come_from_desired(desired: JSONObject, reported: JSONObject) -> None:
    """The delta only names keys of desired, with desired's values at its leaves."""
    difference = delta(desired, reported)
    assert set(difference) <= set(desired)
    assert covers(desired, difference)


# -- metadata ----------------------------------------------------------------------------------


def test_stamp_records_write_times_per_leaf() -> None:
    """Written leaves get the write's time; untouched ones keep theirs; null removes them."""
    first = stamp({}, {"a": 1, "b": {"c": [1], "d": "x"}, "e": {}}, 100)
    assert first == {
        "a": {"timestamp": 100},
        "b": {"c": {"timestamp": 100}, "d": {"timestamp": 100}},
        "e": {},
    }
    second = stamp(first, {"b": {"d": None, "f": True}, "a": None}, 200)
    assert second == {
        "b": {"c": {"timestamp": 100}, "f": {"timestamp": 200}},
        "e": {},
    }
    assert first["b"] == {"c": {"timestamp": 100}, "d": {"timestamp": 100}}


def test_stamp_tells_a_timestamp_key_from_leaf_metadata() -> None:
    """A state key named "timestamp" is metadata of an object, not a leaf's time."""
    metadata = stamp({}, {"timestamp": 5}, 100)
    assert metadata == {"timestamp": {"timestamp": 100}}
    # The state's "timestamp" becomes an object: its old leaf metadata is not merged into.
    assert stamp(metadata, {"timestamp": {"x": 1}}, 200) == {"timestamp": {"x": {"timestamp": 200}}}
    leaf_then_object = stamp({"a": {"timestamp": 100}}, {"a": {"b": 1}}, 200)
    assert leaf_then_object == {"a": {"b": {"timestamp": 200}}}


@FEW
@given(OBJECTS)
def test_stamp_from_empty_mirrors_the_state(patch: JSONObject) -> None:
    """Stamping a patch onto nothing gives metadata leaves exactly where the state has leaves."""
    state = merge({}, patch)
    assert metadata_shape(stamp({}, patch, 7)) == shape(state)


@FEW
@given(st.lists(OBJECTS, max_size=5))
def test_section_metadata_mirrors_state_after_any_writes(patches: list[JSONObject]) -> None:
    """After any sequence of patches, the metadata has the state's shape and the version counts."""
    section = EMPTY
    for now, patch in enumerate(patches):
        section = section.apply(patch, now, BIG, path="reported")
        assert metadata_shape(section.metadata) == shape(section.state)
    assert section.version == len(patches)


# -- sections ----------------------------------------------------------------------------------


def test_empty_section() -> None:
    """EMPTY has no state, no metadata and version 0."""
    assert Section({}, {}, 0) == EMPTY


def test_section_version_must_not_be_negative() -> None:
    """A section refuses a negative version."""
    with pytest.raises(ValueError, match="version"):
        Section({}, {}, -1)


def test_apply_merges_stamps_and_bumps_the_version() -> None:
    """apply merges the patch, stamps what it wrote and adds one to the version."""
    section = EMPTY.apply({"a": 1, "b": {"c": 2}}, 100, Limits(), path="reported")
    section = section.apply({"b": {"c": None, "d": 3}}, 200, Limits(), path="reported")
    assert section == Section(
        {"a": 1, "b": {"d": 3}},
        {"a": {"timestamp": 100}, "b": {"d": {"timestamp": 200}}},
        2,
    )


def test_apply_of_an_empty_patch_still_bumps_the_version() -> None:
    """Every write bumps the version, even one that changes nothing."""
    section = EMPTY.apply({"a": 1}, 100, Limits(), path="reported")
    again = section.apply({}, 200, Limits(), path="reported")
    assert (again.state, again.metadata, again.version) == (section.state, section.metadata, 2)


def test_apply_rejects_an_invalid_patch_with_its_path() -> None:
    """An invalid patch is a BadRequest naming the section and the section is unchanged."""
    section = EMPTY.apply({"a": 1}, 100, Limits(), path="desired")
    with pytest.raises(BadRequest, match=r"desired\.a\[0\] is a binary value"):
        section.apply({"a": [b"x"]}, 200, Limits(), path="desired")
    assert section.state == {"a": 1}


def test_apply_rejects_a_merged_state_over_the_limit() -> None:
    """A small patch that makes the merged state too large is TooLarge, and nothing changes."""
    limits = Limits(max_bytes=30)
    section = EMPTY.apply({"a": "x" * 20}, 100, limits, path="reported")
    with pytest.raises(TooLarge, match="reported is 39 bytes as compact JSON; the limit is 30"):
        section.apply({"b": "yyyy"}, 200, limits, path="reported")
    assert section.state == {"a": "x" * 20}
    assert section.version == 1
    # Deleting while adding can keep it within the limit.
    smaller = section.apply({"a": None, "b": "yyyy"}, 200, limits, path="reported")
    assert smaller.state == {"b": "yyyy"}


def test_apply_measures_the_merged_state_not_the_patch() -> None:
    """A patch of deletions longer than the limit is fine when the merged state fits."""
    limits = Limits(max_bytes=30)
    section = EMPTY.apply({"a": 1, "bbbbbbbbbb": 2}, 100, limits, path="reported")
    patch: JSONObject = {"bbbbbbbbbb": None, "cccccccccc": None, "dddddddddd": None}
    assert encoded_size(patch) > limits.max_bytes
    assert section.apply(patch, 200, limits, path="reported").state == {"a": 1}


def test_replace_drops_the_old_state_and_stamps_every_key() -> None:
    """replace keeps only the new state (nulls left out), stamped at one time, version + 1."""
    section = EMPTY.apply({"a": 1, "b": {"c": 2}}, 100, Limits(), path="desired")
    replaced = section.replace({"b": {"d": 1, "e": None}, "f": None}, 200, Limits(), path="desired")
    assert replaced == Section({"b": {"d": 1}}, {"b": {"d": {"timestamp": 200}}}, 2)


def test_replace_validates_the_new_state() -> None:
    """replace refuses an invalid or too large state."""
    with pytest.raises(BadRequest, match=r"desired has the key \"\$a\""):
        EMPTY.replace({"$a": 1}, 1, Limits(), path="desired")
    with pytest.raises(TooLarge):
        EMPTY.replace({"a": "x" * 100}, 1, Limits(max_bytes=50), path="desired")


@FEW
@given(st.lists(OBJECTS, max_size=4))
def test_section_round_trips_through_to_dict(patches: list[JSONObject]) -> None:
    """from_dict(to_dict()) gives back an equal section."""
    section = EMPTY
    for now, patch in enumerate(patches):
        section = section.apply(patch, now, BIG, path="reported")
    data = section.to_dict()
    assert set(data) == {"state", "metadata", "version"}
    assert Section.from_dict(data) == section


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "must be an object"),
        ({"state": {}, "metadata": {}, "version": 0, "extra": 1}, "remove extra"),
        ({"metadata": {}, "version": 0}, "state must be an object"),
        ({"state": {}, "metadata": [], "version": 0}, "metadata must be an object"),
        ({"state": {}, "metadata": {}}, "version must be an integer"),
        ({"state": {}, "metadata": {}, "version": -1}, "version must be an integer"),
        ({"state": {}, "metadata": {}, "version": True}, "version must be an integer"),
        ({"state": {}, "metadata": {}, "version": "3"}, "version must be an integer"),
    ],
)
def test_from_dict_rejects_a_wrong_shape(data: object, fragment: str) -> None:
    """from_dict raises ValueError saying which part of the section is wrong."""
    with pytest.raises(ValueError, match=fragment):
        Section.from_dict(data)

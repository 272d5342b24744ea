"""The report queue: coalescing, answers matched by token, requeue, back-off, persistence."""

from __future__ import annotations

import json
import logging
import math
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.reports import Report, ReportQueue, ReportSettings, merge_patches
from shadow import JSONObject, merge

KEYS = st.sampled_from(["a", "b", "c"])
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["x", "y"])
# Values that may appear in a patch: null deletes, objects nest, arrays and scalars replace.
PATCH_VALUES = st.recursive(
    SCALARS | st.lists(SCALARS, max_size=2),
    lambda children: st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)
PATCHES = st.dictionaries(KEYS, PATCH_VALUES, max_size=3)
# A stored state never holds null as an object member (merge removes them).
STATES = PATCHES.map(lambda patch: merge({}, patch))


def _rng(seed: int) -> random.Random:
    """A seeded generator: jitter and tokens repeat from run to run."""
    return random.Random(seed)  # noqa: S311 # jitter and correlation tokens, not secrets


def _queue(**overrides: Any) -> ReportQueue:
    return ReportQueue(ReportSettings(**overrides), rng=_rng(7))


def _send(queue: ReportQueue, now: float = 0.0) -> Report:
    report = queue.take(now)
    assert report is not None
    return report


def _apply_all(state: JSONObject, patches: list[JSONObject] | tuple[JSONObject, ...]) -> JSONObject:
    for patch in patches:
        state = merge(state, patch)
    return state


# -- merge_patches -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(STATES, PATCHES, PATCHES)
def test_merge_patches_equals_applying_both(
    state: JSONObject, a: JSONObject, b: JSONObject
) -> None:
    """Whenever merge_patches gives a patch, applying it equals applying a then b, to any state."""
    folded = merge_patches(a, b)
    if folded is not None:
        assert merge(state, folded) == merge(merge(state, a), b)


def _object_over_non_object(a: JSONObject, b: JSONObject) -> bool:
    return any(
        isinstance(value, dict)
        and key in a
        and (not isinstance(a[key], dict) or _object_over_non_object(a[key], value))
        for key, value in b.items()
    )


@settings(max_examples=100, deadline=None)
@given(PATCHES, PATCHES)
def test_merge_patches_refuses_only_an_object_over_a_non_object(
    a: JSONObject, b: JSONObject
) -> None:
    """Two patches fold into one unless b puts an object where a has null, a scalar or an array."""
    assert (merge_patches(a, b) is None) == _object_over_non_object(a, b)


def test_merge_patches_keeps_a_later_null() -> None:
    """A later null survives folding, so the key is still deleted from the state."""
    assert merge_patches({"a": 1, "b": {"c": 1}}, {"a": None, "b": {"c": None}}) == {
        "a": None,
        "b": {"c": None},
    }
    assert merge_patches({"a": None}, {"a": 2}) == {"a": 2}


def test_merge_patches_refuses_an_object_after_a_non_object() -> None:
    """An object after null or a scalar cannot be one patch: states with other keys there differ."""
    assert merge_patches({"a": None}, {"a": {"b": 1}}) is None
    assert merge_patches({"x": {"a": [1]}}, {"x": {"a": {"b": 1}}}) is None
    # Why: the sequence makes "a" exactly {"b": 1}, but the candidate patch keeps "c".
    state = {"a": {"c": 1}}
    assert merge(merge(state, {"a": None}), {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert merge(state, {"a": {"b": 1}}) != {"a": {"b": 1}}


# -- coalescing ----------------------------------------------------------------------------------


def test_puts_while_offline_coalesce_latest_wins() -> None:
    """Many patches waiting become one report holding the latest value of each key."""
    queue = _queue()
    for cpu in range(100):
        queue.put({"nodestats": {"cpu": cpu}, "apps": [{"name": "web", "version": str(cpu)}]})
    queue.put({"node": {"hostname": "gw-1"}})
    assert len(queue) == 1
    report = _send(queue)
    assert report.patch == {
        "nodestats": {"cpu": 99},
        "apps": [{"name": "web", "version": "99"}],
        "node": {"hostname": "gw-1"},
    }
    assert report.token.startswith("r-")
    assert len(report.token) <= 64


def test_put_copies_and_checks_the_patch() -> None:
    """The caller may reuse its dict; NaN and non-objects are refused; empty patches are ignored."""
    queue = _queue()
    patch: JSONObject = {"apps": {"web": "1"}}
    queue.put(patch)
    patch["apps"]["web"] = "changed"
    assert queue.pending == ({"apps": {"web": "1"}},)
    with pytest.raises(ValueError, match="NaN"):
        queue.put({"cpu": math.nan})
    with pytest.raises(TypeError, match="must be a dict"):
        queue.put([1])  # type: ignore[arg-type]
    queue.put({})
    assert len(queue) == 1


def test_an_object_after_a_deletion_is_a_second_report_in_order() -> None:
    """A deletion followed by a new object is sent as two reports, so the cloud ends right."""
    queue = _queue()
    queue.put({"apps": {"web": {"version": "1", "port": 80}}})
    queue.put({"apps": {"web": None}})
    queue.put({"apps": {"web": {"version": "2"}}})
    queue.put({"nodestats": {"cpu": 1}})
    assert len(queue) == 2
    cloud: JSONObject = {"apps": {"web": {"version": "0", "debug": True}}}
    first = _send(queue)
    assert queue.take(0.0) is None  # one report in flight at a time
    assert queue.accepted(first.token)
    cloud = merge(cloud, first.patch)
    second = _send(queue)
    cloud = merge(cloud, second.patch)
    assert cloud == {"apps": {"web": {"version": "2"}}, "nodestats": {"cpu": 1}}


# -- answers -------------------------------------------------------------------------------------


def test_accepted_settles_only_its_own_token() -> None:
    """Answers with another token are ignored; the matching one frees the queue."""
    queue = _queue()
    queue.put({"a": 1})
    report = _send(queue)
    assert not queue.accepted("r-other")
    assert not queue.rejected("r-other", 400, now=0.0)
    assert queue.in_flight == report
    assert queue.accepted(report.token)
    assert queue.idle
    assert not queue.accepted(report.token)  # a duplicate answer (QoS 1) changes nothing


def test_each_report_gets_a_new_token() -> None:
    """Tokens are unique within a queue, and differ between queues of different seeds."""
    queue = _queue()
    tokens = set()
    for value in range(5):
        queue.put({"a": value})
        report = _send(queue)
        tokens.add(report.token)
        queue.accepted(report.token)
    assert len(tokens) == 5
    other = ReportQueue(rng=_rng(8))
    other.put({"a": 0})
    assert _send(other).token not in tokens


def test_disconnect_puts_in_flight_back_under_newer_changes() -> None:
    """The in-flight patch is re-queued and newer changes win over it, key by key."""
    queue = _queue()
    queue.put({"apps": {"web": "1", "db": "1"}, "cpu": 10})
    sent = _send(queue)
    queue.put({"apps": {"db": None}, "cpu": 20})
    queue.on_disconnect()
    assert queue.in_flight is None
    assert queue.pending == ({"apps": {"web": "1", "db": None}, "cpu": 20},)
    resent = _send(queue)
    assert resent.token != sent.token
    assert not queue.accepted(sent.token)  # a late answer to the old report is ignored
    assert queue.accepted(resent.token)


def test_disconnect_keeps_an_unfoldable_in_flight_patch_first() -> None:
    """If the in-flight patch cannot fold under the newer one, both are kept, in-flight first."""
    queue = _queue()
    queue.put({"a": None})
    _send(queue)
    queue.put({"a": {"b": 1}})
    queue.on_disconnect()
    assert queue.pending == ({"a": None}, {"a": {"b": 1}})


def test_unanswered_report_is_sent_again_after_the_timeout() -> None:
    """With no answer in answer_timeout, take re-sends the patch under a new token."""
    queue = _queue(answer_timeout=30.0)
    queue.put({"a": 1})
    first = _send(queue, 0.0)
    assert queue.wake_at() == 30.0
    assert queue.take(29.9) is None
    queue.put({"b": 2})
    again = _send(queue, 30.0)
    assert again.token != first.token
    assert again.patch == {"a": 1, "b": 2}


def test_409_requeues_and_makes_a_full_report_due() -> None:
    """A version conflict puts the patch back and asks the agent for a full report."""
    queue = _queue(heartbeat=100.0)
    queue.full_reported(0.0)
    assert not queue.due(1.0)
    queue.put({"a": 1})
    report = _send(queue)
    assert queue.rejected(report.token, 409, now=1.0, message="stale version")
    assert queue.due(1.0)
    assert queue.pending == ({"a": 1},)
    assert queue.take(1.0) is not None  # no back-off for a conflict


@pytest.mark.parametrize("code", [429, 500, 503])
def test_429_and_5xx_requeue_and_back_off_exponentially(code: int) -> None:
    """Refusals in a row wait longer each time (with jitter, capped), and accept resets it."""
    queue = _queue(backoff_initial=1.0, backoff_max=4.0)
    queue.put({"a": 1})
    now = 0.0
    waits = []
    for _ in range(4):
        report = _send(queue, now)
        assert queue.rejected(report.token, code, now=now)
        wake = queue.wake_at()
        assert wake is not None
        assert queue.take(now) is None
        waits.append(wake - now)
        now = wake
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 2.0
    assert 2.0 <= waits[2] <= 4.0
    assert 2.0 <= waits[3] <= 4.0  # capped at backoff_max
    report = _send(queue, now)
    assert report.patch == {"a": 1}
    queue.accepted(report.token)
    queue.put({"a": 2})
    report = _send(queue, now)
    queue.rejected(report.token, code, now=now)
    wake = queue.wake_at()
    assert wake is not None
    assert wake - now <= 1.0


@pytest.mark.parametrize("code", [400, 403, 413])
def test_hopeless_rejections_drop_the_report_and_log(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """400, 403 and 413 can never succeed: the patch is dropped and newer ones still go."""
    queue = _queue()
    queue.put({"big": "x"})
    report = _send(queue)
    queue.put({"small": 1})
    with caplog.at_level(logging.WARNING, logger="edge.reports"):
        assert queue.rejected(report.token, code, now=0.0, message="reported is too large")
    assert "dropped" in caplog.text
    assert "too large" in caplog.text
    assert queue.pending == ({"small": 1},)
    assert queue.take(0.0) is not None


# -- full reports --------------------------------------------------------------------------------


def test_full_report_is_due_at_start_after_reconnect_and_each_heartbeat() -> None:
    """A full report is due at start, then after a jittered heartbeat or a reconnect."""
    queue = _queue(heartbeat=100.0, jitter=0.1)
    assert queue.due(0.0)
    queue.full_reported(0.0)
    assert 90.0 <= queue.next_full_at <= 110.0
    assert not queue.due(89.9)
    assert queue.due(110.0)
    queue.full_reported(110.0)
    queue.on_disconnect()
    assert queue.due(111.0)


def test_heartbeats_are_jittered_across_nodes() -> None:
    """Nodes started together do not all report at the same moment."""
    times = set()
    for seed in range(10):
        queue = ReportQueue(ReportSettings(heartbeat=100.0), rng=_rng(seed))
        queue.full_reported(0.0)
        times.add(queue.next_full_at)
    assert len(times) == 10


def test_settings_refuse_nonsense() -> None:
    """Non-positive timers, a jitter of 1 or more and a cap below the first wait are refused."""
    with pytest.raises(ValueError, match="heartbeat"):
        ReportSettings(heartbeat=0)
    with pytest.raises(ValueError, match="jitter"):
        ReportSettings(jitter=1.0)
    with pytest.raises(ValueError, match="backoff_max"):
        ReportSettings(backoff_initial=10.0, backoff_max=1.0)


# -- persistence ---------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_in_flight_as_pending(tmp_path: Path) -> None:
    """A saved queue loads with its waiting patches, the in-flight one folded in front."""
    path = tmp_path / "reports.json"
    queue = _queue()
    queue.put({"a": None})
    _send(queue)
    queue.put({"a": {"b": 1}})
    queue.put({"c": 1})
    queue.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["reports.json"]  # no temporary left
    loaded = ReportQueue.load(path, rng=_rng(1))
    assert loaded.pending == ({"a": None}, {"a": {"b": 1}, "c": 1})
    assert loaded.in_flight is None


def test_save_replaces_the_previous_file(tmp_path: Path) -> None:
    """Saving again overwrites, and an emptied queue saves as empty."""
    path = tmp_path / "reports.json"
    queue = _queue()
    queue.put({"a": 1})
    queue.save(path)
    report = _send(queue)
    queue.accepted(report.token)
    queue.save(path)
    assert json.loads(path.read_text()) == {"format": 1, "pending": []}
    assert ReportQueue.load(path).idle


def test_load_without_a_file_is_empty(tmp_path: Path) -> None:
    """A first start (no file yet) gives an empty queue with a full report due."""
    queue = ReportQueue.load(tmp_path / "absent.json")
    assert queue.idle
    assert queue.due(0.0)


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"format": 2, "pending": []}', '{"format": 1, "pending": [1]}', "[NaN]"],
)
def test_a_damaged_file_is_logged_and_ignored(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file save did not write loads as an empty queue with a warning, not a crash."""
    path = tmp_path / "reports.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="edge.reports"):
        queue = ReportQueue.load(path)
    assert queue.idle
    assert "starting empty" in caplog.text


# -- the whole protocol, against a model cloud ---------------------------------------------------

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), PATCHES),
        st.tuples(st.just("send"), st.booleans()),
        st.tuples(st.sampled_from(["accept", "409", "429", "disconnect", "tick"]), st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(STATES, OPERATIONS)
def test_cloud_ends_with_every_put_applied_in_order(
    initial: JSONObject, operations: list[tuple[str, Any]]
) -> None:
    """Whatever answers, losses and reconnects happen, the cloud ends as if each put went in order.

    A report the cloud received may or may not have been stored when the connection drops;
    resent patches must still give the same state.
    """
    queue = ReportQueue(ReportSettings(answer_timeout=5.0), rng=_rng(0))
    cloud = initial
    expected = initial
    now = 0.0
    for name, argument in operations:
        now += 1.0
        flight = queue.in_flight
        if name == "put":
            queue.put(argument)
            expected = merge(expected, argument)
        elif name == "send":
            queue.take(now)
        elif name == "accept" and flight is not None:
            cloud = merge(cloud, flight.patch)
            queue.accepted(flight.token)
        elif name in ("409", "429") and flight is not None:
            queue.rejected(flight.token, int(name), now=now)
        elif name == "disconnect":
            if flight is not None and argument:  # stored, but the answer was lost
                cloud = merge(cloud, flight.patch)
            queue.on_disconnect()
        elif name == "tick":
            now += 10.0
    now += 1000.0
    while not queue.idle:
        report = queue.take(now)
        assert report is not None
        cloud = merge(cloud, report.patch)
        assert queue.accepted(report.token)
    assert cloud == expected


@settings(max_examples=100, deadline=None)
@given(STATES, st.lists(PATCHES, max_size=8))
def test_queued_reports_equal_every_put_applied(
    state: JSONObject, patches: list[JSONObject]
) -> None:
    """The waiting reports, applied in order, give what every put applied in order gives."""
    queue = ReportQueue(pending=patches, rng=_rng(0))
    assert _apply_all(state, queue.pending) == _apply_all(state, patches)
    assert len(queue) <= max(1, len(patches))

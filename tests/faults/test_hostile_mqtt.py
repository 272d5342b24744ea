"""Hostile MQTT payloads from a real node, and a node flooding reports.

Against ``baetyl up`` (SQLite): hypothesis sends random bytes, random JSON and msgpack
structures and mutations of valid requests, from one node's mTLS connection, to every topic a
node may publish to and to the ones it may not (another node's, its own downstream ones).
After each: the cloud is alive and answers a valid request, every refusal has a 4xx code the
protocol documents, each request got exactly one answer, and the stored shadows changed only
by a report answered ``accepted``. tests/shadow/test_service.py pins one example per error
code; this explores the space around them.
"""

from __future__ import annotations

import collections
import json
import math
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from broker import NODE_DOWNSTREAM, NODE_UPSTREAM
from shadow.codec import decode
from tests.broker.clients import Message, MqttClient
from tests.faults.livecloud import LiveCloud, node_id, sqlite_query
from tests.faults.strategies import FUZZING, json_values

FUZZER, OTHER = "fuzzer", "other"
MAX_EXAMPLES = FUZZING.max_examples
REFUSAL_CODES = {400, 403, 404, 409, 413, 429}  # a bad input is never a 5xx
SHADOW_CHANNELS = ("report", "desire/get", "resource/get")  # answered by the shadow service
ANSWER_WAIT = 10.0  # seconds a valid request may take before the cloud counts as stuck
FLOOD_PAUSE = 0.005


def topic(name: str, channel: str) -> str:
    return f"$baetyl/node/{node_id(name)}/{channel}"


# Every topic a node may publish to, its downstream ones, another node's, and a few that are no
# shadow topic at all; the node publishes to each of them.
OWN_UPSTREAM = [topic(FUZZER, channel) for channel in NODE_UPSTREAM]
FORBIDDEN = [
    *(topic(FUZZER, channel) for channel in NODE_DOWNSTREAM),
    *(topic(OTHER, channel) for channel in (*NODE_UPSTREAM, *NODE_DOWNSTREAM)),
    topic(FUZZER, "report/extra"),
    f"$baetyl/node/{node_id(FUZZER)}",
    "$baetyl/other",
    "plain/topic",
]


# -- payloads --------------------------------------------------------------------------------------

VALUES = json_values(st.integers(-(2**63), 2**64 - 1))
OBJECTS = st.dictionaries(st.text(max_size=8), VALUES, max_size=5)
TOKENS = st.text(
    min_size=1, max_size=64, alphabet=st.characters(min_codepoint=33, max_codepoint=126)
)
BAD_KEYS = st.sampled_from(["", "$x", "k" * 129, "a.$b"])


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


@st.composite
def envelopes(draw: st.DrawFn, channel: str) -> dict[str, Any]:
    """A valid request for ``channel`` (report, desire/get, resource/get), then one mutation."""
    body: dict[str, Any] = {"clientToken": draw(TOKENS)}
    if channel == "report":
        body["reported"] = draw(OBJECTS)
        if draw(st.booleans()):
            body["version"] = draw(st.integers(0, 3))
    elif channel == "resource/get":
        body["kind"] = draw(st.sampled_from(["app", "config", "secret", "pod", ""]))
        body["name"] = draw(st.text(max_size=10))
        body["version"] = draw(st.text(max_size=4))
    mutation = draw(
        st.sampled_from(
            ["none", "unknown field", "drop field", "retype field", "bad key", "deep", "huge"]
        )
    )
    field = draw(st.sampled_from(sorted(body)))
    if mutation == "unknown field":
        body[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
    elif mutation == "drop field":
        del body[field]
    elif mutation == "retype field":
        body[field] = draw(VALUES)
    elif mutation == "bad key":
        body["reported" if channel == "report" else field] = {draw(BAD_KEYS): 1}
    elif mutation == "deep":
        body["reported" if channel == "report" else field] = _nested(draw(st.integers(8, 14)))
    elif mutation == "huge":  # over the section limit (64 KiB) or the payload limit (128 KiB)
        size = draw(st.sampled_from([70_000, 140_000]))
        body["reported" if channel == "report" else field] = {"big": "x" * size}
    return body


@st.composite
def encoded(draw: st.DrawFn, body: Any) -> bytes:
    """``body`` as JSON or msgpack, possibly damaged (cut short, NaN, a byte flipped)."""
    way = draw(st.sampled_from(["json", "msgpack", "nan", "cut", "flip"]))
    if way == "msgpack":
        return bytes(msgpack.packb(body))
    text = json.dumps(body, separators=(",", ":")).encode()
    if way == "nan":
        return text.replace(b'"clientToken":', b'"x":NaN,"clientToken":', 1)
    if way == "cut" and text:
        return text[: draw(st.integers(0, len(text) - 1))]
    if way == "flip" and text:
        index = draw(st.integers(0, len(text) - 1))
        return text[:index] + bytes([text[index] ^ draw(st.integers(1, 255))]) + text[index + 1 :]
    return text


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A (topic, payload): mostly near-valid requests on the node's own shadow topics."""
    kind = draw(st.sampled_from(["envelope", "envelope", "json", "msgpack", "bytes"]))
    channel = draw(st.sampled_from(SHADOW_CHANNELS))
    if kind == "envelope" and draw(st.integers(0, 4)):
        name = topic(FUZZER, channel)
    else:
        name = draw(st.sampled_from(draw(st.sampled_from([OWN_UPSTREAM, FORBIDDEN]))))
    if kind == "envelope":
        return name, draw(encoded(draw(envelopes(channel))))
    if kind == "json":
        return name, json.dumps(draw(VALUES)).encode()
    if kind == "msgpack":
        value = draw(
            VALUES | st.dictionaries(st.text(max_size=4), st.binary(max_size=4), max_size=2)
        )
        return name, bytes(msgpack.packb(value))
    return name, draw(st.binary(max_size=300))


# -- the node --------------------------------------------------------------------------------------


def answer_body(message: Message) -> dict[str, Any]:
    body, _encoding = decode(message.payload, max_bytes=1 << 24)
    return body


def answers_before_probe(client: MqttClient, name: str, token: str) -> list[Message]:
    """Send a valid ``desire/get``; what the node received before its answer (which keeps the
    order of requests, so that is everything answering what was sent before)."""
    client.publish(topic(name, "desire/get"), json.dumps({"clientToken": token}).encode(), qos=1)
    received: list[Message] = []
    deadline = time.monotonic() + ANSWER_WAIT
    while (left := deadline - time.monotonic()) > 0:
        message = client.receive(left)
        if (
            message.topic == topic(name, "desire")
            and answer_body(message).get("clientToken") == token
        ):
            return received
        received.append(message)
    raise AssertionError(f"the cloud did not answer a valid desire/get within {ANSWER_WAIT} s")


def expected_answers(name: str) -> int:
    """How many answers one request on ``name`` gets: one, or none on the presence topic."""
    if name in OWN_UPSTREAM:
        return 1 if name.rsplit(f"{node_id(FUZZER)}/", 1)[1] in SHADOW_CHANNELS else 0
    return 1  # refused by the broker: 403 on the node's own report/rejected


def examples_of_every_refusal(test: Any) -> Any:
    """One input per documented refusal code (but 429), always tried first: a bad payload
    (400), another node's topic (403), a spec nobody has (404), a stale version (409), a
    payload over 128 KiB (413)."""
    for name, body in (
        (topic(FUZZER, "report"), b'{"reported": {"x": 1}'),
        (topic(OTHER, "report"), b'{"reported": {"x": 1}}'),
        (topic(FUZZER, "resource/get"), b'{"kind": "app", "name": "nope", "version": "1"}'),
        (topic(FUZZER, "report"), b'{"version": 99, "reported": {"x": 1}}'),
        (topic(FUZZER, "report"), json.dumps({"reported": {"x": "y" * 140_000}}).encode()),
    ):
        test = example(request=(name, body))(test)
    return test


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCloud]:
    """``baetyl up`` on SQLite, its rate limit out of the fuzzer's way."""
    workdir = tmp_path_factory.mktemp("hostile-mqtt")
    db = workdir / "baetyl-data" / "baetyl.db"
    with LiveCloud(
        workdir, f"sqlite://{db}", sqlite_query(db),
        "--set", "shadow.report_rate=100000", "--set", "shadow.report_burst=100000",
        nodes=[FUZZER, OTHER],
    ) as live:  # fmt: skip
        yield live


def test_fuzzed_payloads_on_every_topic_are_refused_cleanly(
    cloud: LiveCloud, tmp_path: Path, record_property: Any
) -> None:
    """Random and near-valid payloads on every topic a node can name: no crash, a valid request
    still answered after each, only documented 4xx refusals, one answer per request, and the
    stored shadows changed only by reports answered accepted."""
    client = cloud.node(FUZZER)
    assert answers_before_probe(client, FUZZER, "warm-up") == []
    codes: collections.Counter[int] = collections.Counter()
    tally = collections.Counter[str]()

    @FUZZING
    @given(request=requests())
    @examples_of_every_refusal
    def send(request: tuple[str, bytes]) -> None:
        name, payload = request
        before, other_before = cloud.stored(FUZZER), cloud.stored(OTHER)
        client.publish(name, payload, qos=1)
        tally["sent"] += 1
        received = answers_before_probe(client, FUZZER, f"probe-{tally['sent']}")
        assert cloud.alive, "the cloud died"
        answers = [m for m in received if not m.topic.endswith("/delta")]
        assert len(answers) == expected_answers(name), (name, payload[:200], answers)
        accepted = False
        for message in answers:
            body = answer_body(message)
            if message.topic.endswith("/rejected"):
                assert body["code"] in REFUSAL_CODES, (name, payload[:200], body)
                assert body["message"], body
                codes[body["code"]] += 1
            elif message.topic == topic(FUZZER, "report/accepted"):
                accepted = True
                tally["accepted"] += 1
        after = cloud.stored(FUZZER)
        assert after is not None
        assert before is not None
        assert (after.desired_version, after.desired) == (before.desired_version, before.desired)
        if accepted:
            assert after.reported_version == before.reported_version + 1
        else:
            assert after == before, (name, payload[:200], answers)
        assert cloud.stored(OTHER) == other_before

    send()
    figures = {
        "scenario": "hostile-mqtt-payloads",
        "inputs": tally["sent"],
        "accepted": tally["accepted"],
        "refused": sum(codes.values()),
        "refused_by_code": dict(sorted(codes.items())),
    }
    record_property("figures", figures)
    print(f"faults hostile-mqtt-payloads: {json.dumps(figures)}")
    assert sum(codes.values()) > MAX_EXAMPLES // 2  # most inputs are bad ones
    assert set(codes) >= {400, 403, 404, 409, 413}


def test_a_flooding_node_gets_429_and_others_keep_their_latency(tmp_path: Path) -> None:
    """A node sending 400 reports at once is answered 429 beyond its burst and rate, only its
    accepted reports are stored, and another node's reports meanwhile are answered as fast as
    before the flood (the documented defaults: 10 requests/s, bursts of 50)."""
    db = tmp_path / "baetyl-data" / "baetyl.db"
    with LiveCloud(tmp_path, f"sqlite://{db}", sqlite_query(db), nodes=["flood", "calm"]) as cloud:
        flood, calm = cloud.node("flood"), cloud.node("calm")

        def calm_report(index: int) -> float:
            started = time.monotonic()
            calm.publish(
                topic("calm", "report"), json.dumps({"reported": {"i": index}}).encode(), 1
            )
            answer = calm.receive_on(topic("calm", "report/accepted"), timeout=ANSWER_WAIT)
            assert answer_body(answer)["version"] == index + 1
            return time.monotonic() - started

        baseline = [calm_report(index) for index in range(3)]
        count = 400

        def flood_reports() -> None:
            for index in range(count):
                body = {"clientToken": f"f{index}", "reported": {f"k{index}": index}}
                flood.client.publish(topic("flood", "report"), json.dumps(body).encode(), qos=1)
                time.sleep(FLOOD_PAUSE)  # about 200 a second for two seconds

        started = time.monotonic()
        flooder = threading.Thread(target=flood_reports)
        flooder.start()
        during: list[float] = []
        while flooder.is_alive():
            during.append(calm_report(len(baseline) + len(during)))
        flooder.join()
        outcome: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while len(outcome) < count and time.monotonic() < deadline:
            message = flood.receive(max(0.1, deadline - time.monotonic()))
            body = answer_body(message)
            if message.topic.endswith("/accepted"):
                outcome[body["clientToken"]] = "accepted"
            elif message.topic.endswith("/rejected"):
                assert body["code"] == 429, body
                assert "slow down" in body["message"] or "retry" in body["message"]
                outcome[body["clientToken"]] = "429"
        elapsed = time.monotonic() - started
        accepted = {token for token, result in outcome.items() if result == "accepted"}
        assert len(outcome) == count, f"{count - len(outcome)} reports got no answer"
        # A burst of 50, then 10 per second for as long as the flood took to be read.
        assert 50 <= len(accepted) <= 50 + math.ceil(10 * elapsed) + 1, (len(accepted), elapsed)
        stored = cloud.stored("flood")
        assert stored is not None
        assert set(stored.reported) == {f"k{token[1:]}" for token in accepted}
        assert stored.reported_version == len(accepted)
        assert cloud.alive

    assert len(during) >= 3, "the other node's reports did not overlap the flood"
    figures = {
        "scenario": "hostile-flood",
        "sent": count,
        "accepted": len(accepted),
        "refused_429": count - len(accepted),
        "other_node_latency_s": {
            "before_max": round(max(baseline), 4),
            "during_max": round(max(during), 4),
            "during_median": round(statistics.median(during), 4),
        },
    }
    print(f"faults hostile-flood: {json.dumps(figures)}")
    assert max(during) <= max(1.0, 20 * max(baseline)), figures

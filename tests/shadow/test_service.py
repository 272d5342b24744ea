"""The shadow service over real MQTT: embedded broker, mTLS, paho clients, a real store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shadow import (
    Conflict,
    DesiredFollower,
    RequestError,
    Section,
    TooLarge,
    Unavailable,
    parse_accepted,
    parse_delta,
    parse_desire,
    parse_rejected,
    parse_resource,
)
from shadow.server import DesiredWrite, ShadowSettings
from tests.broker.clients import MosquittoSub, MqttClient, require_mosquitto
from tests.broker.helpers import NODE_A, NODE_B, Pki, broker_settings, build_pki
from tests.shadow.cloud import CloudThread

A = f"$baetyl/node/{NODE_A}/"
B = f"$baetyl/node/{NODE_B}/"
NodeFactory = Callable[..., MqttClient]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with server, node and operator certificates on disk."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_cloud(pki: Pki, tmp_path: Path) -> Iterator[Callable[..., CloudThread]]:
    """Start broker + SQLite store + shadow service (``db_url=`` and settings overridable)."""
    running: list[CloudThread] = []

    def start(db_url: str | None = None, **shadow: Any) -> CloudThread:
        url = db_url or f"sqlite://{tmp_path / 'shadow.db'}"
        cloud = CloudThread(broker_settings(), pki.files, url, ShadowSettings(**shadow))
        running.append(cloud.__enter__())
        return cloud

    yield start
    for cloud in reversed(running):
        cloud.__exit__(None, None, None)


@pytest.fixture
def cloud(start_cloud: Callable[..., CloudThread]) -> CloudThread:
    return start_cloud()


@pytest.fixture
def node(pki: Pki, cloud: CloudThread) -> Iterator[NodeFactory]:
    """Connect node A (or ``creds=``) to the cloud, subscribed to its downstream topics."""
    clients: list[MqttClient] = []

    def make(
        creds: Any = None,
        *,
        clean_session: bool = True,
        subscribe: bool = True,
        port: int | None = None,
    ) -> MqttClient:
        creds = creds or pki.node_a
        client = MqttClient(
            port or cloud.port,
            creds.client_id,
            ca=pki.ca_file,
            creds=creds,
            clean_session=clean_session,
        )
        clients.append(client)
        client.connect()
        if subscribe:
            prefix = f"$baetyl/node/{creds.client_id}/"
            for channel in ("desire", "delta", "report/accepted", "resource", "+/rejected"):
                assert client.subscribe(prefix + channel, qos=1) == [1], channel
        return client

    yield make
    for client in clients:
        client.close()


def decode(payload: bytes) -> dict[str, Any]:
    """JSON, or msgpack when the request was msgpack (answers use the request's encoding)."""
    value = json.loads(payload) if payload[:1] == b"{" else msgpack.unpackb(payload)
    assert isinstance(value, dict)
    return value


def report(client: MqttClient, body: dict[str, Any] | bytes, node: str = A) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    client.publish(node + "report", payload, qos=1)


def answer(client: MqttClient, suffix: str) -> dict[str, Any]:
    return decode(client.receive_on(A + suffix).payload)


def rejection(client: MqttClient, suffix: str = "report/rejected") -> dict[str, Any]:
    message = answer(client, suffix)
    parse_rejected(message)  # the documented shape
    return message


# -- desired -> node -------------------------------------------------------------------------------


def test_desired_write_reaches_the_node_with_a_higher_version(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """Each desired write pushes the full document to the node, its version one higher."""
    client = node()
    first = cloud.call(
        lambda s: s.update_desired(NODE_A, {"apps": [{"name": "web", "version": "1"}]})
    )
    pushed = parse_desire(answer(client, "desire"))
    assert pushed.version == first.version == 1
    assert pushed.desired == {"apps": [{"name": "web", "version": "1"}]}
    cloud.call(lambda s: s.update_desired(NODE_A, {"nodeprops": {"region": "eu"}}))
    pushed = parse_desire(answer(client, "desire"))
    assert pushed.version == 2
    assert pushed.desired == {
        "apps": [{"name": "web", "version": "1"}],
        "nodeprops": {"region": "eu"},
    }


def test_desire_get_answers_the_full_document_with_the_token(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """desire/get is answered on desire with the full document and the client token echoed."""
    cloud.call(lambda s: s.replace_desired(NODE_A, {"apps": []}))
    client = node()
    client.publish(A + "desire/get", b'{"clientToken":"boot-1"}', qos=1)
    message = parse_desire(answer(client, "desire"))
    assert (message.version, message.desired, message.client_token) == (1, {"apps": []}, "boot-1")
    client.publish(A + "desire/get", b"", qos=1)  # an empty request is allowed
    assert parse_desire(answer(client, "desire")).client_token is None


def test_a_node_offline_during_three_changes_ends_with_the_latest(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """Queued pushes and the get after reconnecting never make the node go back a version."""
    client = node(clean_session=False)
    client.close()
    for version in (1, 2, 3):
        cloud.call(lambda s, v=version: s.update_desired(NODE_A, {"release": v}))  # type: ignore[misc]
    client = node(clean_session=False, subscribe=False)  # the session kept its subscriptions
    client.publish(A + "desire/get", b'{"clientToken":"reconnect"}', qos=1)
    follower = DesiredFollower()
    applied: list[int] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and follower.version < 3:
        message = parse_desire(decode(client.receive_on(A + "desire").payload))
        if follower.offer(message):
            applied.append(message.version)
            assert message.desired == {"release": message.version}
    assert follower.version == 3
    assert applied == sorted(applied)
    # A redelivered older push arriving late is ignored.
    stale = parse_desire({"version": 2, "desired": {"release": 2}, "timestamp": 1})
    assert follower.offer(stale) is False
    assert follower.version == 3


def test_concurrent_writers_one_wins_the_other_gets_409(cloud: CloudThread) -> None:
    """Two writes naming the same version: one is applied, the other refused with 409."""
    cloud.call(lambda s: s.update_desired(NODE_B, {"owner": "nobody"}))

    async def race(service: Any) -> list[Section | RequestError]:
        writes = [
            DesiredWrite(NODE_B, {"owner": "alice"}, version=1),
            DesiredWrite(NODE_B, {"owner": "bob"}, version=1),
        ]
        results: list[Section | RequestError] = await service.write_desired_many(writes)
        return results

    results = cloud.call(race)
    wins = [r for r in results if isinstance(r, Section)]
    losses = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert losses[0].current_version == 2
    stored = cloud.stored(NODE_B)
    assert stored is not None
    assert stored.desired.version == 2
    assert stored.desired.state == wins[0].state


def test_a_stale_desired_write_changes_nothing(cloud: CloudThread) -> None:
    """A desired write naming an old version raises Conflict and leaves the shadow as it was."""
    cloud.call(lambda s: s.update_desired(NODE_B, {"a": 1}))
    cloud.call(lambda s: s.update_desired(NODE_B, {"a": 2}))
    with pytest.raises(Conflict):
        cloud.call(lambda s: s.update_desired(NODE_B, {"a": 3}, version=1))
    stored = cloud.stored(NODE_B)
    assert stored is not None
    assert (stored.desired.version, stored.desired.state) == (2, {"a": 2})


# -- node -> report --------------------------------------------------------------------------------


def test_report_is_accepted_and_answered_with_the_delta(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """A report is stored, accepted with its token and version, and the delta follows."""
    cloud.call(lambda s: s.update_desired(NODE_A, {"apps": {"web": "2", "db": "1"}}))
    client = node()
    report(client, {"clientToken": "r1", "reported": {"apps": {"web": "1", "db": "1"}}})
    ok = parse_accepted(answer(client, "report/accepted"))
    assert (ok.client_token, ok.version) == ("r1", 1)
    difference = parse_delta(answer(client, "delta"))
    assert difference.version == 1
    assert difference.delta == {"apps": {"web": "2"}}
    stored = cloud.stored(NODE_A)
    assert stored is not None
    assert stored.reported.state == {"apps": {"web": "1", "db": "1"}}
    assert stored.reported.metadata["apps"]["web"]["timestamp"] > 0

    report(client, {"clientToken": "r2", "version": 1, "reported": {"apps": {"web": "2"}}})
    assert parse_accepted(answer(client, "report/accepted")).version == 2
    assert client.drain(0.3) == []  # in sync: no delta


def test_report_naming_a_stale_version_gets_409(cloud: CloudThread, node: NodeFactory) -> None:
    """A report based on an old reported version is refused with 409 and the current version."""
    client = node()
    report(client, {"reported": {"x": 1}})
    answer(client, "report/accepted")
    report(client, {"clientToken": "old", "version": 0, "reported": {"x": 2}})
    refused = rejection(client)
    assert refused["code"] == 409
    assert refused["version"] == 1
    assert refused["clientToken"] == "old"
    assert cloud.record(NODE_A).reported.state == {"x": 1}


def test_msgpack_requests_get_msgpack_answers(cloud: CloudThread, node: NodeFactory) -> None:
    """A node speaking msgpack is answered, and later pushed to, in msgpack."""
    client = node()
    body = {"clientToken": "m1", "reported": {"cpu": 0.5, "tags": ["a", "b"]}}
    client.publish(A + "report", msgpack.packb(body), qos=1)
    ok = msgpack.unpackb(client.receive_on(A + "report/accepted").payload)
    assert ok["clientToken"] == "m1"
    cloud.call(lambda s: s.update_desired(NODE_A, {"cpu": 0.5}))
    pushed = msgpack.unpackb(client.receive_on(A + "desire").payload)
    assert pushed["desired"] == {"cpu": 0.5}
    assert cloud.record(NODE_A).reported.state == {"cpu": 0.5, "tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        (b'{"reported": {"x": 1', 400, "JSON"),
        (b"\xde\x00\x01\xc1", 400, "msgpack"),
        (b"hello", 400, "neither"),
        (b'{"reported": [1, 2]}', 400, "reported"),
        (b'{"reported": {}, "version": "7"}', 400, "version"),
        (b'{"reported": {}, "colour": "red"}', 400, "colour"),
        (b'{"reported": {"$x": 1}}', 400, "$"),
        (b'{"reported": {"x": NaN}}', 400, "NaN"),
        (json.dumps({"reported": {"d": json.loads("[" * 20 + "]" * 20)}}).encode(), 400, "deep"),
        (json.dumps({"reported": {"big": "x" * 140_000}}).encode(), 413, "limit"),
        (json.dumps({"reported": {"big": "x" * 70_000}}).encode(), 413, "limit"),
    ],
    ids=[
        "bad-json",
        "bad-msgpack",
        "not-a-map",
        "reported-not-object",
        "version-not-int",
        "unknown-field",
        "dollar-key",
        "nan",
        "too-deep",
        "payload-too-large",
        "document-too-large",
    ],
)
def test_bad_reports_are_rejected_and_change_nothing(
    cloud: CloudThread, node: NodeFactory, payload: bytes, code: int, words: str
) -> None:
    """Each malformed report gets the documented rejection; the stored shadow is unchanged."""
    client = node()
    report(client, {"reported": {"kept": True}})
    answer(client, "report/accepted")
    before = cloud.stored(NODE_A)
    report(client, payload)
    refused = rejection(client)
    assert refused["code"] == code
    assert words.lower() in refused["message"].lower()
    after = cloud.stored(NODE_A)
    assert after == before
    assert after is not None
    assert after.reported.state == {"kept": True}


def test_a_report_on_another_nodes_topic_is_refused_with_403(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """Publishing to another node's report topic is dropped and answered 403 on one's own."""
    client = node()
    report(client, {"reported": {"evil": True}}, node=B)
    refused = rejection(client)
    assert refused["code"] == 403
    assert NODE_B in refused["message"]
    assert cloud.stored(NODE_B) is None


def test_a_node_over_its_rate_gets_429(start_cloud: Callable[..., CloudThread], pki: Pki) -> None:
    """Beyond its burst a node's reports are answered 429; the accepted ones are stored."""
    cloud = start_cloud(report_rate=0.5, report_burst=3)
    client = MqttClient(cloud.port, NODE_A, ca=pki.ca_file, creds=pki.node_a)
    try:
        client.connect()
        client.subscribe(A + "report/+", qos=1)
        for index in range(6):
            report(client, {"clientToken": f"t{index}", "reported": {"n": index}})
        answers = [m for m in client.drain(0.5) if m.topic.startswith(A + "report/")]
        accepted = [
            decode(m.payload)["clientToken"] for m in answers if m.topic.endswith("accepted")
        ]
        refused = [decode(m.payload) for m in answers if m.topic.endswith("rejected")]
        assert accepted == ["t0", "t1", "t2"]
        assert [r["code"] for r in refused] == [429, 429, 429]
        assert [r["clientToken"] for r in refused] == ["t3", "t4", "t5"]
        assert cloud.record(NODE_A).reported.state == {"n": 2}
    finally:
        client.close()


def test_answers_to_one_node_keep_its_order(cloud: CloudThread, node: NodeFactory) -> None:
    """Good and bad requests interleaved are answered in the order they were sent."""
    client = node()
    for index in range(10):
        if index % 3 == 2:
            report(client, f'{{"clientToken":"t{index}","reported":7}}'.encode())
        else:
            report(client, {"clientToken": f"t{index}", "reported": {"n": index}})
    tokens = [
        decode(m.payload)["clientToken"]
        for m in client.drain(0.5)
        if m.topic in (A + "report/accepted", A + "report/rejected")
    ]
    assert tokens == [f"t{index}" for index in range(10)]


# -- resources -------------------------------------------------------------------------------------


def test_resource_get_returns_the_spec_or_404(cloud: CloudThread, node: NodeFactory) -> None:
    """resource/get answers the spec it has for the node, and 404 on resource/rejected otherwise."""
    cloud.resources.specs[(NODE_A, "app", "web", "3")] = {"image": "nginx:1.27"}
    client = node()
    request = {"clientToken": "g1", "kind": "app", "name": "web", "version": "3"}
    client.publish(A + "resource/get", json.dumps(request).encode(), qos=1)
    got = parse_resource(answer(client, "resource"))
    assert (got.name, got.version, got.spec, got.client_token) == (
        "web",
        "3",
        {"image": "nginx:1.27"},
        "g1",
    )
    request["version"] = "4"
    client.publish(A + "resource/get", json.dumps(request).encode(), qos=1)
    refused = rejection(client, "resource/rejected")
    assert refused["code"] == 404
    request["kind"] = "pod"
    client.publish(A + "resource/get", json.dumps(request).encode(), qos=1)
    assert rejection(client, "resource/rejected")["code"] == 400


# -- presence, store failure, debugging ------------------------------------------------------------


def test_presence_follows_connections(cloud: CloudThread, node: NodeFactory) -> None:
    """A node is online while connected, offline after, with last-seen stored."""
    assert cloud.record(NODE_A).online is False
    client = node(subscribe=False)
    deadline = time.monotonic() + 5
    while not cloud.record(NODE_A).online and time.monotonic() < deadline:
        time.sleep(0.02)
    record = cloud.record(NODE_A)
    assert record.online
    assert record.last_seen is not None
    client.close()
    while cloud.record(NODE_A).online and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cloud.record(NODE_A).online is False
    stored = cloud.stored(NODE_A)
    assert stored is not None
    assert stored.online is False
    assert stored.last_seen is not None
    assert stored.last_seen >= record.last_seen


def test_a_store_outage_refuses_writes_with_500_and_recovers(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """While the store fails, reports get 500 and desired writes Unavailable; nothing changes."""
    client = node()
    report(client, {"reported": {"v": 1}})
    answer(client, "report/accepted")
    assert cloud.store is not None
    cloud.store.failing = True
    report(client, {"clientToken": "during", "reported": {"v": 2}})
    refused = rejection(client)
    assert (refused["code"], refused["clientToken"]) == (500, "during")
    with pytest.raises(Unavailable):
        cloud.call(lambda s: s.update_desired(NODE_A, {"v": 2}))
    cloud.store.failing = False
    assert cloud.record(NODE_A).reported.state == {"v": 1}
    report(client, {"clientToken": "after", "reported": {"v": 3}})
    assert parse_accepted(answer(client, "report/accepted")).version == 2


def test_desired_state_over_the_limit_is_refused(cloud: CloudThread) -> None:
    """A desired write making the document too large raises TooLarge and stores nothing."""
    with pytest.raises(TooLarge):
        cloud.call(lambda s: s.update_desired(NODE_A, {"blob": "x" * 70_000}))
    assert cloud.stored(NODE_A) is None


def test_mosquitto_sub_with_an_operator_certificate_reads_the_traffic(
    cloud: CloudThread, node: NodeFactory, pki: Pki
) -> None:
    """An operator watching $baetyl/# sees reports and answers as readable JSON."""
    require_mosquitto()
    client = node()
    with MosquittoSub(cloud.port, pki.ca_file, pki.operator, ["$baetyl/#"]) as watcher:
        first = watcher.wait_subscribed(
            lambda: report(client, {"clientToken": "seen", "reported": {"temp": 21.5}})
        )
        lines = [first, *watcher.drain(0.5)]
    text = "\n".join(lines)
    assert '"reported":{"temp":21.5}' in text.replace(" ", "")
    assert '"clientToken":"seen"' in text
    accepted_lines = [line for line in lines if line.startswith(A + "report/accepted")]
    assert accepted_lines, text
    assert json.loads(accepted_lines[0].split(" ", 1)[1])["clientToken"] == "seen"


def test_many_nodes_reporting_at_once_are_all_accepted(cloud: CloudThread, pki: Pki) -> None:
    """Concurrent reports from several nodes are batched and each is accepted exactly once."""
    clients = []
    try:
        creds = [pki.new_node(f"burst-{index}") for index in range(5)]
        for cred in creds:
            client = MqttClient(cloud.port, cred.client_id, ca=pki.ca_file, creds=cred)
            client.connect()
            client.subscribe(f"$baetyl/node/{cred.client_id}/report/accepted", qos=1)
            clients.append(client)

        def burst(client: MqttClient) -> None:
            for index in range(20):
                topic = f"$baetyl/node/{client.client_id}/report"
                body = {"clientToken": str(index), "reported": {f"k{index}": index}}
                client.client.publish(topic, json.dumps(body).encode(), qos=1)

        threads = [threading.Thread(target=burst, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for client in clients:
            tokens: list[str] = []
            deadline = time.monotonic() + 10
            while len(tokens) < 20 and time.monotonic() < deadline:
                tokens.append(
                    decode(client.receive(timeout=deadline - time.monotonic()).payload)[
                        "clientToken"
                    ]
                )
            assert tokens == [str(index) for index in range(20)]
            stored = cloud.stored(client.client_id)
            assert stored is not None
            assert stored.reported.version == 20
            assert stored.reported.state == {f"k{index}": index for index in range(20)}
    finally:
        for client in clients:
            client.close()


def test_a_failing_resource_lookup_answers_500_and_spares_the_rest_of_the_batch(
    cloud: CloudThread, node: NodeFactory
) -> None:
    """A resource/get whose lookup fails is answered 500; the report queued with it is stored."""
    cloud.resources.broken.add("boom")
    client = node()
    request = {"clientToken": "g", "kind": "app", "name": "boom", "version": "1"}
    client.client.publish(A + "resource/get", json.dumps(request).encode(), qos=1)
    client.client.publish(A + "report", b'{"clientToken":"r","reported":{"ok":1}}', qos=1)
    refused = rejection(client, "resource/rejected")
    assert refused["code"] == 500
    assert parse_accepted(answer(client, "report/accepted")).client_token == "r"
    assert cloud.record(NODE_A).reported.state == {"ok": 1}

"""Database outage: MariaDB stopped under a running cloud, then started again.

The cloud (``baetyl up`` on a throwaway MariaDB of this test's own, see ``mariadb_instance``)
must say it is not ready, refuse API requests with a clear 503 and MQTT reports with the
documented store-failure code (500, PROTOCOL.md) rather than lose or half-apply them, stay up,
and come back by itself once the database is back: no restart, nothing accepted lost, nothing
refused stored.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from management.api.app import READY_TIMEOUT_S
from management.store import Kind, Resource, ResourceStore, all_migrations
from shadow import StoreError
from shadow.server import Database, SqlShadowStore
from tests.broker.clients import MqttClient
from tests.faults.livecloud import Answer, LiveCloud, node_id
from tests.faults.mariadb_instance import MariaDB

OUTAGE_S = float(os.environ.get("BAETYL_FAULTS_OUTAGE_S", "30"))  # the 30 s
READY_BOUND_S = 10.0  # readyz must be 200 again this soon after the database answers
NOT_READY_BOUND_S = 5.0  # and 503 this soon after it went away
DB = "baetyl"
STORE_DOWN = "The shadow store is unavailable"  # the 500 answer's message (PROTOCOL.md)


def report(
    client: MqttClient, name: str, token: str | None, state: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Publish a report and return its answer: ``("accepted" | "rejected", body)``."""
    prefix = f"$baetyl/node/{node_id(name)}/report"
    body: dict[str, Any] = {"reported": state}
    if token is not None:
        body["clientToken"] = token
    client.publish(prefix, json.dumps(body).encode(), qos=1)
    deadline = time.monotonic() + 10
    while (left := deadline - time.monotonic()) > 0:
        message = client.receive(left)
        if message.topic in (prefix + "/accepted", prefix + "/rejected"):
            answer = json.loads(message.payload)
            if token is None or answer.get("clientToken") in (token, None):
                return message.topic.rsplit("/", 1)[1], answer
    raise AssertionError(f"no answer to report {token!r} of {name}")


def assert_unavailable(answer: Answer, what: str) -> None:
    """A 503 ``{code, message, requestId}`` saying the database is unavailable and to retry."""
    assert answer.status == 503, f"{what}: {answer.status} {answer.body}"
    assert answer.body["code"] == "Unavailable", what
    message = answer.body["message"].lower()
    assert "database" in message, f"{what}: {message}"
    assert "retry" in message, f"{what}: {message}"
    assert answer.body["requestId"], what
    assert answer.headers["X-Request-Id"] == answer.body["requestId"], what
    assert int(answer.headers["Retry-After"]) > 0, what


def poll(check: Any, limit: float, what: str, every: float = 0.05) -> float:
    """Seconds until ``check()`` holds; fails after ``limit`` seconds."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            raise AssertionError(f"{what} did not happen within {limit} s")
        time.sleep(every)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "outage_s"),
    [(signal.SIGTERM, OUTAGE_S), (signal.SIGKILL, min(OUTAGE_S, 8.0))],
    ids=["sigterm", "sigkill"],
)
def test_cloud_refuses_writes_during_a_database_outage_and_recovers_by_itself(
    tmp_path: Path, how: signal.Signals, outage_s: float, record_property: Any
) -> None:
    """MariaDB stopped (SIGTERM: a clean stop for the issue's 30 s; SIGKILL: a crash) under a
    running cloud: readyz 503, every API call 503 with a clear message, reports rejected 500,
    the process alive; after the restart readyz is 200 within a bound without restarting the
    cloud, writes succeed, what was accepted before is kept and what was refused is absent."""
    figures: dict[str, Any] = {"scenario": "db-outage", "signal": how.name, "outage_s": outage_s}
    with (
        MariaDB.create(tmp_path / "mariadb") as server,
        LiveCloud(
            tmp_path / "cloud",
            server.url(DB),
            lambda sql, params: server.execute(DB, sql, params),
            nodes=["gw-1", "gw-2"],
        ) as cloud,
    ):
        # -- before: everything works ------------------------------------------------------------
        assert cloud.ready() == 200
        assert cloud.call("POST", "/configs", {"name": "kept", "data": {"k": "1"}}).status == 201
        put = cloud.call("PUT", "/configs/kept", {"data": {"k": "2"}})
        assert (put.status, put.body["version"]) == (200, "2")
        assert cloud.call("POST", "/configs", {"name": "doomed", "data": {}}).status == 201
        gw1 = cloud.node("gw-1")
        outcome, answer = report(gw1, "gw-1", "before", {"before": 1})
        assert outcome == "accepted", answer
        version_before = answer["version"]

        # -- the database goes away --------------------------------------------------------------
        stopped = time.monotonic()
        server.stop(how)
        figures["db_stop_s"] = round(time.monotonic() - stopped, 3)
        figures["not_ready_after_s"] = round(
            poll(lambda: cloud.ready() == 503, NOT_READY_BOUND_S, "readyz 503"), 3
        )
        readyz = cloud.call("GET", "/readyz")
        assert readyz.body["code"] == "Unavailable"
        assert "database" in readyz.body["message"].lower()
        assert cloud.call("GET", "/healthz").status == 200  # alive, just not ready

        refused = {
            "POST": cloud.call("POST", "/configs", {"name": "during", "data": {"k": "x"}}),
            "PUT": cloud.call("PUT", "/configs/kept", {"data": {"k": "lost"}}),
            "DELETE": cloud.call("DELETE", "/configs/doomed"),
            "GET one": cloud.call("GET", "/configs/kept"),
            "GET list": cloud.call("GET", "/nodes"),
            "PUT properties": cloud.call("PUT", "/nodes/gw-1/properties", {"desire": {"a": 1}}),
        }
        for what, answer_during in refused.items():
            assert_unavailable(answer_during, what)

        # A node the cloud has in memory, and one it has never seen (connecting now).
        outcome, answer = report(gw1, "gw-1", "during", {"during": 1})
        assert (outcome, answer["code"], answer["clientToken"]) == ("rejected", 500, "during")
        assert STORE_DOWN in answer["message"]
        gw2 = cloud.node("gw-2")
        outcome, answer = report(gw2, "gw-2", "during-2", {"during": 2})
        assert (outcome, answer["code"]) == ("rejected", 500), answer
        assert STORE_DOWN in answer["message"]

        # The rest of the outage: still not ready, still alive, every time we look.
        checks = 0
        while time.monotonic() - stopped < outage_s:
            assert cloud.alive, "the cloud died during the database outage"
            assert cloud.ready() == 503
            checks += 1
            time.sleep(min(1.0, max(0.0, outage_s - (time.monotonic() - stopped))))
        figures["readyz_checks_during"] = checks
        figures["refused_api_calls"] = len(refused)

        # -- the database comes back; the cloud is not restarted ---------------------------------
        figures["db_start_s"] = round(server.start(), 3)
        figures["outage_observed_s"] = round(time.monotonic() - stopped, 3)
        ready_after = poll(lambda: cloud.ready() == 200, READY_BOUND_S, "readyz 200")
        figures["ready_after_db_s"] = round(ready_after, 3)
        assert cloud.alive
        assert cloud.up.starts == 1, "the cloud was restarted"

        created = cloud.call("POST", "/configs", {"name": "after", "data": {"k": "3"}})
        assert created.status == 201, created.body
        outcome, answer = report(gw1, "gw-1", "after", {"after": 1})
        assert outcome == "accepted", answer
        assert answer["version"] == version_before + 1  # the refused report bumped nothing
        outcome, answer = report(gw2, "gw-2", "after-2", {"after": 2})
        assert outcome == "accepted", answer

        # Nothing accepted was lost, nothing refused was stored.
        listed = cloud.call("GET", "/configs")
        assert listed.status == 200
        assert sorted(item["name"] for item in listed.body["items"]) == ["after", "doomed", "kept"]
        kept = cloud.call("GET", "/configs/kept").body
        assert (kept["version"], kept["data"]) == ("2", {"k": "2"})
        one, two = cloud.stored("gw-1"), cloud.stored("gw-2")
        assert one is not None
        assert two is not None
        assert one.reported == {"before": 1, "after": 1}
        assert one.reported_version == version_before + 1
        assert two.reported == {"after": 2}
        assert cloud.up.errors().count("Traceback") == 0, cloud.up.errors()

    record_property("figures", figures)
    (tmp_path / "faults-db-outage.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"faults db-outage: {json.dumps(figures)}")
    assert ready_after <= READY_BOUND_S


def test_readyz_is_503_within_its_timeout_while_the_database_hangs(tmp_path: Path) -> None:
    """A database that stops answering but keeps its connections open (SIGSTOP: a hung host,
    or a network that drops packets) makes /readyz answer 503 within its timeout rather than
    hang with it, and 200 again as soon as the database answers."""
    with (
        MariaDB.create(tmp_path / "mariadb") as server,
        LiveCloud(
            tmp_path / "cloud", server.url(DB), lambda sql, params: server.execute(DB, sql, params)
        ) as cloud,
    ):
        assert cloud.ready() == 200
        server.pause()
        try:
            started = time.monotonic()
            answer = cloud.call("GET", "/readyz")
            took = time.monotonic() - started
        finally:
            server.resume()
        assert answer.status == 503, answer
        assert f"did not answer within {READY_TIMEOUT_S:g} s" in answer.body["message"]
        assert READY_TIMEOUT_S - 0.5 <= took <= READY_TIMEOUT_S + 2
        poll(lambda: cloud.ready() == 200, READY_BOUND_S, "readyz 200 after the database resumed")
        assert cloud.call("POST", "/configs", {"name": "after", "data": {}}).status == 201


async def test_store_calls_during_an_outage_raise_store_error_and_reconnect(
    tmp_path: Path,
) -> None:
    """With the database stopped (cleanly or killed) every ResourceStore and SqlShadowStore call
    raises StoreError, never a driver error (which the API would answer 500), and the same open
    store works again once the database is back, without reopening it."""
    with MariaDB.create(tmp_path / "mariadb") as server:
        async with Database(server.url(DB), migrations=all_migrations()) as db:
            store = ResourceStore(db)
            shadows = SqlShadowStore(db)
            await store.ensure_namespace("default")
            await store.create(Resource("default", Kind.CONFIG, "c", body={"n": 0}))
            for round_, how in enumerate((signal.SIGTERM, signal.SIGKILL), start=1):
                server.stop(how)
                calls: dict[str, Callable[[], Awaitable[object]]] = {
                    "ping": db.ping,
                    "load": lambda: shadows.load(["default.gw"]),
                    "node_ids": shadows.node_ids,
                    "get": lambda: store.get("default", Kind.CONFIG, "c"),
                    "list": lambda: store.list("default", Kind.CONFIG),
                    "create": lambda: store.create(Resource("default", Kind.CONFIG, "new")),
                    "update": lambda: store.update(Resource("default", Kind.CONFIG, "c")),
                    "delete": lambda: store.delete("default", Kind.CONFIG, "c"),
                    "ensure_namespace": lambda: store.ensure_namespace("other"),
                    "revoke_token": lambda: store.revoke_token("default", "nope"),
                    "use_activation": lambda: store.use_activation("jti", "default", "gw", 0),
                }
                messages = []
                for what, call in calls.items():
                    with pytest.raises(StoreError) as raised:
                        await call()
                    assert type(raised.value) is StoreError, what
                    assert "retry" in str(raised.value) or "check" in str(raised.value), what
                    messages.append(str(raised.value))
                # The driver's own words name the server that cannot be reached.
                unreachable = "Can't connect to MySQL server on '127.0.0.1'"
                assert any(unreachable in message for message in messages), messages
                server.start()
                updated = await store.update(
                    Resource("default", Kind.CONFIG, "c", body={"n": round_})
                )
                assert updated.version == round_ + 1
            assert await store.list("default", Kind.CONFIG) == [updated]

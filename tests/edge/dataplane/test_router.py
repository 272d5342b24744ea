"""The Router end to end: rows written into the spool as the node broker writes them go up to a
real broker through a real paho client with a node certificate, and are read by an operator's
subscription on ``$baetyl/node/+/up/#``; a real function runtime transforms them; a downlink
message is published to a local target on the broker's plaintext listener."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from edge.dataplane.publisher import PahoPublisher
from edge.dataplane.router import Router
from edge.dataplane.routes import RouteSpec
from edge.functions.runtime import FunctionServer, Handler
from tests.broker.clients import Message, MqttClient
from tests.broker.helpers import NODE_A, BrokerThread, Pki
from tests.edge.dataplane.brokerside import BrokerSpool
from tests.edge.dataplane.conftest import Connect
from tests.support.polling import until

UP = f"$baetyl/node/{NODE_A}/up/"


def route(name: str, source: dict[str, str], target: dict[str, str], **more: Any) -> RouteSpec:
    return RouteSpec.parse({"name": name, "source": source, "target": target, **more})


TELEMETRY = route("telemetry", {"local": "devices/+/telemetry"}, {"cloud": "t/{device}/{node}"})


@contextlib.asynccontextmanager
async def running(router: Router) -> AsyncIterator[Router]:
    task = asyncio.create_task(router.run())
    try:
        yield router
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def new_router(spool: BrokerSpool, tmp_path: Path, **options: Any) -> Router:
    return Router(node_id=NODE_A, node_name="node-a", spool_path=tmp_path / "spool.db",
                  function_url=None, **options)  # fmt: skip


async def subscriber(connect: Connect, pki: Pki) -> MqttClient:
    """An operator reading every node's uplink (as ``mosquitto_sub`` with its certificate)."""
    client = await connect(pki.operator)
    assert await asyncio.to_thread(client.subscribe, "$baetyl/node/+/up/#", 1) == [1]
    return client


async def received(client: MqttClient, count: int, limit: float = 30.0) -> list[Message]:
    """The next ``count`` messages the client gets (fails after ``limit`` seconds)."""

    def take() -> list[Message]:
        out: list[Message] = []
        deadline = time.monotonic() + limit
        while len(out) < count:
            try:
                out.append(client.messages.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {count} messages") from None
        return out

    return await asyncio.to_thread(take)


async def cursor_of(spool: BrokerSpool, name: str) -> int:
    def check() -> dict[str, int] | None:
        cursors = spool.cursors()
        return cursors if name in cursors else None

    return (await until(check, what=f"route {name}'s cursor"))[name]


async def stats_when(
    router: Router, name: str, check: Callable[[dict[str, object]], bool]
) -> dict[str, object]:
    """Route ``name``'s stats once ``check`` holds for them."""

    def probe() -> dict[str, object] | None:
        stats = router.stats().get(name)
        return stats if stats is not None and check(stats) else None

    return await until(probe, what=f"route {name}'s stats")


async def test_rows_go_up_in_order_the_cursor_advances_and_rows_are_deleted(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    changes = threading.Event()
    router = new_router(spool, tmp_path, on_change=changes.set)
    router.set_routes([TELEMETRY])
    router.set_cloud(PahoPublisher(link.client))
    async with running(router):
        assert await cursor_of(spool, "telemetry") == 0
        rows = [(f"devices/d{n % 2}/{'telemetry' if n % 3 else 'status'}", f"d{n % 2}",
                 str(n).encode()) for n in range(1500)]  # fmt: skip
        ids = spool.insert(rows)
        router.wake()
        wanted = [(f"{UP}t/{device}/node-a", payload) for topic, device, payload in rows
                  if topic.endswith("telemetry")]  # fmt: skip
        got = await received(sub, len(wanted))
        assert [(m.topic, m.payload) for m in got] == wanted
        assert all(m.qos == 1 for m in got)
        await until(lambda: spool.cursors()["telemetry"] == ids[-1], what="the cursor at the end")
        await until(lambda: spool.ids() == [], what="the consumed rows deleted")
        stats = await stats_when(router, "telemetry", lambda s: s["forwarded"] == 1000)
        assert stats == {"forwarded": 1000, "queued": 0, "dropped": 0, "filtered": 0,
                         "failed": 0, "lastError": None}  # fmt: skip
        assert changes.is_set()
    assert await asyncio.to_thread(sub.drain) == []  # nothing twice


async def test_a_new_route_starts_at_the_end_and_a_removed_one_loses_its_cursor(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    old = spool.insert([("devices/d/telemetry", "d", b"history")])
    router = new_router(spool, tmp_path)
    router.set_cloud(PahoPublisher(link.client))
    async with running(router):
        await asyncio.sleep(0.3)  # the router runs without routes: nothing deleted yet
        assert spool.ids() == old
        router.set_routes([TELEMETRY])
        assert await cursor_of(spool, "telemetry") == old[-1]
        spool.insert([("devices/d/telemetry", "d", b"new")])
        router.wake()
        assert [m.payload for m in await received(sub, 1)] == [b"new"]
        router.set_routes([])
        await until(lambda: spool.cursors() == {}, what="the removed route's cursor deleted")
        assert "telemetry" not in router.stats()
    assert await asyncio.to_thread(sub.drain) == []  # no history replayed


async def test_the_link_lost_mid_stream_loses_nothing_and_keeps_the_order(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    """The node's session taken over (its connection dropped by the broker) while 3,000 messages
    are in flight; resumed on a new connection from the cursor: every message arrives, and the
    first arrival of each is in order (duplicates are possible: at least once)."""
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    router = new_router(spool, tmp_path, window=200)
    router.set_routes([TELEMETRY])
    router.set_cloud(PahoPublisher(link.client))
    async with running(router):
        await cursor_of(spool, "telemetry")
        total = 3000
        ids = spool.insert(("devices/d/telemetry", "d", str(n).encode()) for n in range(total))
        router.wake()
        first = await received(sub, 300)
        second = await connect(pki.node_a)  # takes the session over: the first link drops
        await asyncio.to_thread(link.disconnected.wait, 5)
        router.set_cloud(None)  # what the agent does when its link goes offline
        await asyncio.sleep(0.2)
        router.set_cloud(PahoPublisher(second.client))
        seen = [int(m.payload) for m in first]

        def all_seen() -> bool:
            seen.extend(int(m.payload) for m in drain_now(sub))
            return set(seen) == set(range(total))

        await until(all_seen, limit=60, what="every message")
        await until(lambda: spool.cursors()["telemetry"] == ids[-1], what="the cursor at the end")
    firsts = list(dict.fromkeys(seen))
    assert firsts == sorted(firsts)


def drain_now(client: MqttClient) -> list[Message]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(client.messages.get_nowait())
    return out


async def test_the_cloud_away_routes_wait_and_resume_from_their_cursor(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    sub = await subscriber(connect, pki)
    router = new_router(spool, tmp_path)
    router.set_routes([TELEMETRY])
    async with running(router):
        await cursor_of(spool, "telemetry")
        spool.insert(("devices/d/telemetry", "d", str(n).encode()) for n in range(50))
        router.wake()
        await stats_when(router, "telemetry", lambda s: s["queued"] == 50)
        assert await asyncio.to_thread(sub.drain) == []
        # The spool's bounds delete the 10 oldest while the route waits: counted as its drops.
        spool.drop_oldest(10, {"telemetry": "devices/+/telemetry"})
        await stats_when(router, "telemetry", lambda s: s["dropped"] == 10)
        router.set_cloud(PahoPublisher((await connect(pki.node_a)).client))
        got = await received(sub, 40)
        assert [int(m.payload) for m in got] == list(range(10, 50))


async def test_a_restarted_router_resumes_from_the_persisted_cursor(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    """The agent stopped mid-stream and started again: the new router goes on from the cursor
    the first one persisted; every message arrives, first arrivals in order."""
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    total = 2000
    first = new_router(spool, tmp_path, window=100)
    first.set_routes([TELEMETRY])
    first.set_cloud(PahoPublisher(link.client))
    async with running(first):
        await cursor_of(spool, "telemetry")
        ids = spool.insert(("devices/d/telemetry", "d", str(n).encode()) for n in range(total))
        first.wake()
        seen = [int(m.payload) for m in await received(sub, 500)]
    stopped_at = spool.cursors()["telemetry"]
    assert 0 < stopped_at < ids[-1]
    second = new_router(spool, tmp_path)
    second.set_routes([TELEMETRY])
    second.set_cloud(PahoPublisher(link.client))
    async with running(second):

        def all_seen() -> bool:
            seen.extend(int(m.payload) for m in drain_now(sub))
            return set(seen) == set(range(total))

        await until(all_seen, limit=60, what="every message")
        await until(lambda: spool.cursors()["telemetry"] == ids[-1], what="the cursor at the end")
    firsts = list(dict.fromkeys(seen))
    assert firsts == sorted(firsts)


def convert(event: Any, _context: dict[str, str]) -> Any:
    """The function: drops multiples of 10, fails on multiples of 7, doubles the rest."""
    if event["n"] % 10 == 0:
        return None
    if event["n"] % 7 == 0:
        raise ValueError(f"seven divides {event['n']}")
    return {"n": event["n"], "double": event["n"] * 2}


@pytest.fixture
def function_url() -> Any:
    """The real function runtime's server, serving ``convert`` at ``/scale/convert`` (the path
    the agent's proxy serves it at)."""
    server = FunctionServer(
        ("127.0.0.1", 0), {"scale/convert": Handler("scale/convert", "x.convert", convert)}
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_a_function_route_transforms_drops_and_counts_failures(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path,
    function_url: str,
) -> None:  # fmt: skip
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    spec = route("scaled", {"local": "devices/+/raw"}, {"cloud": "scaled/{2}"},
                 function={"app": "scale", "function": "convert"})  # fmt: skip
    router = Router(node_id=NODE_A, node_name="node-a", spool_path=tmp_path / "spool.db",
                    function_url=function_url)  # fmt: skip
    router.set_routes([spec])
    router.set_cloud(PahoPublisher(link.client))
    async with running(router):
        await cursor_of(spool, "scaled")
        total = 100
        ids = spool.insert(
            ("devices/d/raw", "d", json.dumps({"n": n}).encode()) for n in range(1, total + 1)
        )
        router.wake()
        kept = [n for n in range(1, total + 1) if n % 10 and n % 7]
        got = await received(sub, len(kept))
        assert [m.topic for m in got] == [f"{UP}scaled/d"] * len(kept)
        assert [json.loads(m.payload) for m in got] == [{"n": n, "double": 2 * n} for n in kept]
        await until(lambda: spool.cursors()["scaled"] == ids[-1], what="the cursor at the end")
        stats = await stats_when(router, "scaled", lambda s: s["forwarded"] == len(kept))
        failed = [n for n in range(1, total + 1) if n % 10 and not n % 7]
        assert (stats["filtered"], stats["failed"]) == (10, len(failed))
        assert "seven divides 98" in str(stats["lastError"])
    assert await asyncio.to_thread(sub.drain) == []


async def test_a_target_that_does_not_render_is_a_failed_message_and_the_rest_flow(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    sub = await subscriber(connect, pki)
    link = await connect(pki.node_a)
    spec = route("third", {"local": "devices/#"}, {"cloud": "by-level/{3}"})
    router = new_router(spool, tmp_path)
    router.set_routes([spec])
    router.set_cloud(PahoPublisher(link.client))
    async with running(router):
        await cursor_of(spool, "third")
        spool.insert([("devices/a/x", "a", b"1"), ("devices/short", "b", b"2"),
                      ("devices/c/y", "c", b"3")])  # fmt: skip
        router.wake()
        got = await received(sub, 2)
        assert [(m.topic, m.payload) for m in got] == [(UP + "by-level/x", b"1"),
                                                       (UP + "by-level/y", b"3")]  # fmt: skip
        stats = await stats_when(router, "third", lambda s: bool(s["failed"]))
        assert stats["failed"] == 1
        assert "has only 2" in str(stats["lastError"])


async def test_a_downlink_message_reaches_the_local_target_once_the_broker_acknowledged(
    broker: BrokerThread, pki: Pki, connect: Connect, spool: BrokerSpool, tmp_path: Path
) -> None:
    device = await connect(client_id="thermo-1", plain=True)
    assert await asyncio.to_thread(device.subscribe, "devices/+/commands", 1) == [1]
    spec = route("commands", {"cloud": "cmd/#"}, {"local": "devices/{2}/commands"})
    router = new_router(spool, tmp_path)
    router.set_routes([spec])
    async with running(router):
        # The node broker away: the downlink waits for it (the cloud's message stays unacked).
        pending = asyncio.create_task(router.downlink("cmd/thermo-1", b"on"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        local = await connect(client_id="agent", plain=True)
        router.set_local(PahoPublisher(local.client))
        await asyncio.wait_for(pending, 10)
        message = await asyncio.to_thread(device.receive)
        assert (message.topic, message.payload) == ("devices/thermo-1/commands", b"on")
        await router.downlink("other/thermo-1", b"ignored")  # no route's source matches
        await router.downlink("cmd/thermo-1", b"off")
        message = await asyncio.to_thread(device.receive)
        assert (message.topic, message.payload) == ("devices/thermo-1/commands", b"off")
        assert router.stats()["commands"]["forwarded"] == 2
    assert await asyncio.to_thread(device.drain) == []


async def test_run_returns_when_cancelled_right_after_a_wake(
    spool: BrokerSpool, tmp_path: Path
) -> None:
    # A wake (the link lost, a spool notification) just before the agent stops the router: on
    # Python 3.11 asyncio.wait_for swallowed the cancellation and run went on for good.
    router = new_router(spool, tmp_path)
    router.set_routes([TELEMETRY])  # no cloud publisher: its task waits for one
    task = asyncio.create_task(router.run())
    await cursor_of(spool, "telemetry")
    await until(lambda: router._routes.get("telemetry") is not None, what="the route's task")
    for _ in range(3):
        await asyncio.sleep(0)
    router.wake()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=20)
    if not done:
        task.cancel()  # a second try, so the test ends
        await asyncio.wait([task], timeout=20)
    assert done, "Router.run did not return when cancelled"

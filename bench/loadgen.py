"""The load generator's worker process: a slice of the simulated fleet on its own event loop.

Each node is an `asyncio.Protocol` over TLS with its own certificate; no task per node or per
message. The main process drives the workers through a pipe, one command at a time::

    ("prepare",)                          -> ("prepared", seconds)   load every node's SSLContext
    ("connect", host, port, deadline)     -> ("connect", stats)      CONNECT + SUBSCRIBE desire
    ("fanout", deadline)                  -> ("fanout", stats)       wait for one desire per node
    ("fanin", start_at, seconds, grace)   -> ("fanin", stats)        QoS 1 reports, 1 in flight
    ("arm", tag)                          -> ("armed", nodes)        watch for a desire with `tag`
    ("tagged", deadline)                  -> ("tagged", stats)       wait: every node has `tag`
    ("reports", start_at, seconds, rate, grace) -> ("reports", stats) shadow reports at `rate`/s
    ("close",)                            -> ("closed", count)

Every reply ends with the CPU seconds the worker used on the command.
    ("exit",)                             -> (process ends)

Deadlines and start times are `time.monotonic()` values, which are system-wide on Linux. The
`tagged` receipt times are `time.time()` (wall clock), to compare with the server's write time.

`WorkerSpec.subscribe` adds topic filters (relative to `$baetyl/node/<id>/`, e.g. `report/+`) that
every node subscribes to at connect, after `desire`; the shadow benchmark uses it.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import collections
import contextlib
import json
import random
import resource
import ssl
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import mqtt

__all__ = ["WorkerSpec", "raise_nofile", "worker_main"]

# asyncio allocates and zero-fills a 256 KiB read buffer per TLS connection; 10,000 client
# connections would cost the load generator 2.5 GB for nothing. Client side only.
CLIENT_SSL_BUFFER = 16 * 1024
REPORT_PAYLOAD = b'{"nodestats":{"cpu":0.25,"mem":0.5},"apps":[{"name":"a","version":"1"}]}'
SHADOW_REPORT = (
    b'{"clientToken":"%s","reported":{"nodestats":{"cpu":0.25,"mem":0.5,"seq":%d},'
    b'"apps":[{"name":"a","version":"1","status":"Running"}]}}'
)


def raise_nofile() -> None:
    """Raise this process's open-file limit to the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Which nodes a worker simulates and how it connects them."""

    pki_root: Path
    first: int
    count: int
    concurrency: int
    keepalive: int = 300
    subscribe: tuple[str, ...] = ()  # more filters under $baetyl/node/<id>/, QoS 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ConnectFailed(Exception):
    """The broker refused or dropped a node before its SUBACK."""


class Node(asyncio.Protocol):
    """One simulated node: connect, subscribe to its desire topic, ack desires, send reports."""

    def __init__(self, worker: Worker, node_id: str) -> None:
        self.worker = worker
        self.node_id = node_id
        self.desire_topic = f"$baetyl/node/{node_id}/desire"
        self.report_topic = f"$baetyl/node/{node_id}/report"
        self.transport: asyncio.Transport | None = None
        self.reader = mqtt.PacketReader()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.desire_at: float | None = None
        self.tag_at: float | None = None  # wall clock: the first desire carrying the armed tag
        self.answer_prefix = f"$baetyl/node/{node_id}/report/"
        self.subacks = 0
        self.packet_id = 0
        self.reporting = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(mqtt.connect(self.node_id, keepalive=self.worker.spec.keepalive))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectFailed(f"closed before SUBACK ({exc!r})"))
        else:
            self.worker.lost += 1

    def data_received(self, data: bytes) -> None:
        for kind, flags, body in self.reader.feed(data):
            if kind == mqtt.PUBACK:
                self._on_puback()
            elif kind == mqtt.PUBLISH:
                topic, qos, packet_id, payload = mqtt.parse_publish(flags, body)
                if qos and self.transport is not None:
                    self.transport.write(mqtt.puback(packet_id))
                if topic == self.desire_topic:
                    if self.desire_at is None:
                        self.desire_at = time.monotonic()
                        self.worker.on_desire()
                    tag = self.worker.tag
                    if tag is not None and self.tag_at is None and tag in payload:
                        self.tag_at = time.time()
                        self.worker.on_tagged()
                elif topic.startswith(self.answer_prefix):
                    self.worker.on_answer(topic.endswith("/accepted"), payload)
            elif kind == mqtt.CONNACK:
                if len(body) < 2 or body[1] != 0:
                    self._fail(f"CONNACK return code {body[1] if len(body) > 1 else '?'}")
                elif self.transport is not None:
                    self.transport.write(mqtt.subscribe(1, self.desire_topic, 1))
                    prefix = f"$baetyl/node/{self.node_id}/"
                    for i, extra in enumerate(self.worker.spec.subscribe):
                        self.transport.write(mqtt.subscribe(2 + i, prefix + extra, 1))
            elif kind == mqtt.SUBACK:
                if len(body) < 3 or body[2] == 0x80:
                    self._fail("SUBACK refused a subscription")
                    continue
                self.subacks += 1
                if self.subacks > len(self.worker.spec.subscribe) and not self.ready.done():
                    self.ready.set_result(None)

    # -- fan-in ----------------------------------------------------------------------------------

    def send_report(self) -> None:
        if self.transport is None:
            return
        self.packet_id = self.packet_id % 65535 + 1
        self.transport.write(
            mqtt.publish(self.report_topic, REPORT_PAYLOAD, qos=1, packet_id=self.packet_id)
        )

    def send_shadow_report(self, token: str, seq: int) -> None:
        """A shadow report (PROTOCOL.md) with `token`; the answer comes on report/accepted."""
        if self.transport is None:
            return
        self.packet_id = self.packet_id % 65535 + 1
        payload = SHADOW_REPORT % (token.encode(), seq)
        self.transport.write(
            mqtt.publish(self.report_topic, payload, qos=1, packet_id=self.packet_id)
        )

    def _on_puback(self) -> None:
        worker = self.worker
        now = time.monotonic()
        if now <= worker.fanin_end:
            worker.acks_in_window += 1
            if self.reporting:
                worker.sent += 1
                self.send_report()
                return
        else:
            worker.acks_late += 1
        self.reporting = False

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectFailed(why))
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Worker:
    """A slice of the fleet in one process."""

    def __init__(self, conn: Connection, spec: WorkerSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.contexts: list[ssl.SSLContext] = []
        self.nodes: list[Node | None] = [None] * spec.count
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.desires = 0
        self.desires_done = asyncio.Event()
        self.desires_wanted = 0
        self.fanin_end = 0.0
        self.acks_in_window = 0
        self.acks_late = 0
        self.sent = 0
        self.lost = 0
        # The shadow benchmark: a desire tag to watch for, and reports waiting for their answer.
        self.tag: bytes | None = None
        self.tagged = 0
        self.tagged_wanted = 0
        self.tagged_done = asyncio.Event()
        self.pending: dict[str, float] = {}  # clientToken -> monotonic time of the publish
        self.latencies: list[float] = []
        self.answers_end = 0.0
        self.answered_late = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self.unknown_answers = 0

    def node_id(self, offset: int) -> str:
        return f"bench.n{self.spec.first + offset}"

    def on_desire(self) -> None:
        self.desires += 1
        if self.desires >= self.desires_wanted:
            self.desires_done.set()

    def on_tagged(self) -> None:
        self.tagged += 1
        if self.tagged >= self.tagged_wanted:
            self.tagged_done.set()

    def on_answer(self, accepted: bool, payload: bytes) -> None:
        """A report/accepted or report/rejected: match it to its report by clientToken."""
        now = time.monotonic()
        try:
            answer = json.loads(payload)
            token = answer.get("clientToken")
        except (ValueError, AttributeError):
            token = None
        sent_at = self.pending.pop(token, None) if isinstance(token, str) else None
        if sent_at is None:
            self.unknown_answers += 1
            return
        if now > self.answers_end:
            self.answered_late += 1
        if accepted:
            self.latencies.append(now - sent_at)
        else:
            self.rejected[str(answer.get("code"))] += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._read_command)
        handlers = {
            "prepare": self.prepare,
            "connect": self.connect_all,
            "fanout": self.fanout,
            "fanin": self.fanin,
            "arm": self.arm,
            "tagged": self.wait_tagged,
            "reports": self.reports,
            "close": self.close_all,
        }
        while True:
            command = await self.commands.get()
            if command[0] == "exit":
                self.close_all()
                return
            cpu0 = _cpu()
            reply = handlers[command[0]](*command[1:])
            if asyncio.iscoroutine(reply):
                reply = await reply
            self.conn.send((*reply, _cpu() - cpu0))

    def _read_command(self) -> None:
        while self.conn.poll():
            try:
                self.commands.put_nowait(self.conn.recv())
            except EOFError:
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
                self.commands.put_nowait(("exit",))
                return

    def prepare(self) -> tuple[str, float]:
        started = time.monotonic()
        ca_file = self.spec.pki_root / "ca" / "ca.crt"
        ca_pem = ca_file.read_text()
        for offset in range(self.spec.count):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=ca_pem)
            ctx.load_cert_chain(self.spec.pki_root / "nodes" / f"n{self.spec.first + offset}.pem")
            self.contexts.append(ctx)
        return ("prepared", time.monotonic() - started)

    async def connect_all(
        self, host: str, port: int, deadline: float
    ) -> tuple[str, dict[str, Any]]:
        self.close_all()
        self.desires = 0
        self.desires_wanted = self.spec.count + 1  # set for real by the fan-out command
        self.desires_done.clear()
        self.lost = 0
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.spec.concurrency)
        errors: collections.Counter[str] = collections.Counter()
        retries = 0
        done_at: list[float] = []

        async def one(offset: int) -> None:
            nonlocal retries
            backoff = 0.05
            while True:
                async with gate:
                    node = Node(self, self.node_id(offset))
                    try:
                        timeout = max(0.1, deadline - time.monotonic())
                        async with asyncio.timeout(timeout):
                            await loop.create_connection(
                                lambda node=node: node,  # type: ignore[misc]
                                host,
                                port,
                                ssl=self.contexts[offset],
                                server_hostname="localhost",
                            )
                            await node.ready
                        self.nodes[offset] = node
                        done_at.append(time.monotonic())
                        return
                    except (OSError, ssl.SSLError, ConnectFailed, TimeoutError) as exc:
                        node.close()
                        errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                if time.monotonic() + backoff >= deadline:
                    return
                retries += 1
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 2.0)

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(self.spec.count)))
        ok = sum(1 for n in self.nodes if n is not None)
        return (
            "connect",
            {
                "ok": ok,
                "failed": self.spec.count - ok,
                "retries": retries,
                "started": started,
                "last": max(done_at) if done_at else None,
                "errors": dict(errors.most_common(5)),
            },
        )

    async def fanout(self, deadline: float) -> tuple[str, dict[str, Any]]:
        live = [n for n in self.nodes if n is not None]
        # Desires may arrive before this command: count them from the nodes, then wait for more.
        self.desires_wanted = len(live)
        self.desires = sum(1 for n in live if n.desire_at is not None)
        self.desires_done.clear()
        if self.desires >= self.desires_wanted:
            self.desires_done.set()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.desires_done.wait()
        except TimeoutError:
            pass
        stamps = [n.desire_at for n in live if n.desire_at is not None]
        return (
            "fanout",
            {
                "wanted": len(live),
                "received": len(stamps),
                "first": min(stamps) if stamps else None,
                "last": max(stamps) if stamps else None,
            },
        )

    async def fanin(self, start_at: float, seconds: float, grace: float) -> tuple[str, Any]:
        live = [n for n in self.nodes if n is not None and n.transport is not None]
        self.fanin_end = start_at + seconds
        self.acks_in_window = self.acks_late = self.sent = 0
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        for node in live:
            node.reporting = True
            self.sent += 1
            node.send_report()
        await asyncio.sleep(max(0.0, self.fanin_end - time.monotonic()))
        in_window = self.acks_in_window
        await asyncio.sleep(grace)
        for node in live:
            node.reporting = False
        return (
            "fanin",
            {
                "nodes": len(live),
                "sent": self.sent,
                "acks_in_window": in_window,
                "acks_after": self.acks_late + self.acks_in_window - in_window,
                "lost_connections": self.lost,
            },
        )

    def arm(self, tag: bytes) -> tuple[str, int]:
        """Watch for the next desire whose payload contains `tag` (forgets the previous one)."""
        self.tag = tag
        self.tagged = 0
        self.tagged_done.clear()
        live = 0
        for node in self.nodes:
            if node is not None:
                node.tag_at = None
                live += 1
        self.tagged_wanted = live
        return ("armed", live)

    async def wait_tagged(self, deadline: float) -> tuple[str, dict[str, Any]]:
        """Wait until every node got the armed tag (or the deadline); wall-clock receipt times."""
        live = [n for n in self.nodes if n is not None]
        if self.tagged < len(live):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.tagged_done.wait()
        stamps = [n.tag_at for n in live if n.tag_at is not None]
        self.tag = None
        return (
            "tagged",
            {
                "wanted": len(live),
                "received": len(stamps),
                "first": min(stamps) if stamps else None,
                "last": max(stamps) if stamps else None,
                "lost_connections": self.lost,
            },
        )

    async def reports(
        self, start_at: float, seconds: float, rate: float, grace: float
    ) -> tuple[str, dict[str, Any]]:
        """Shadow reports at `rate` per second (this worker's share), round robin over the nodes.

        Paced by a 5 ms tick, not one report in flight per node: a node may have several. Each
        report's latency is publish -> its report/accepted, matched by clientToken.
        """
        live = [n for n in self.nodes if n is not None and n.transport is not None]
        self.pending.clear()
        self.latencies = []
        self.rejected.clear()
        self.answered_late = self.unknown_answers = 0
        self.answers_end = start_at + seconds
        lost0 = self.lost
        sent = 0
        prefix = f"w{self.spec.first}-"
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if live and rate > 0:
            end = start_at + seconds
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                due = int((now - start_at) * rate) - sent
                for _ in range(due):
                    node = live[sent % len(live)]
                    token = f"{prefix}{sent}"
                    self.pending[token] = time.monotonic()
                    node.send_shadow_report(token, sent)
                    sent += 1
                await asyncio.sleep(0.005)
        in_window = len(self.latencies)
        rejected_in_window = sum(self.rejected.values())
        waited = time.monotonic()
        while self.pending and time.monotonic() - waited < grace:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.05)
        return (
            "reports",
            {
                "nodes": len(live),
                "sent": sent,
                "accepted_in_window": in_window,
                "rejected_in_window": rejected_in_window,
                "accepted": len(self.latencies),
                "rejected": dict(self.rejected),
                "unanswered": len(self.pending),
                "answered_late": self.answered_late,
                "unknown_answers": self.unknown_answers,
                "latencies": self.latencies,
                "lost_connections": self.lost - lost0,
            },
        )

    def close_all(self) -> tuple[str, int]:
        closed = 0
        for i, node in enumerate(self.nodes):
            if node is not None:
                node.close()
                closed += 1
                self.nodes[i] = None
        return ("closed", closed)


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process."""
    raise_nofile()
    asyncio.sslproto.SSLProtocol.max_size = CLIENT_SSL_BUFFER  # type: ignore[attr-defined]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Worker(conn, spec).run())

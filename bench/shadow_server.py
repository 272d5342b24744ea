"""The cloud side of the shadow benchmark, in its own process: broker, store and shadow service.

    python -m bench.shadow_server --db sqlite:///tmp/x.db --pki bench/results/pki

Runs `EmbeddedBroker` (the settings `baetyl broker run` uses, on a free loopback port, with the
garbage-collector policy), `SqlShadowStore` on `Database.open(--db)` (or, with `--db memory`, a
store that keeps nothing durable) and `ShadowService` on one event loop, like `baetyl up`.
Prints one JSON line when ready (``{"ready": true, "port": ..., "pid": ...}``), then takes
commands on stdin, one per line, and answers each with one JSON line on stdout:

    desire <n> <tag>   write {"bench": <tag>} into the desired state of nodes bench.n0..n<n-1>
                       with one `write_desired_many` call; answers the wall-clock time
                       (`time.time()`) at the start of the call and when it returned, and the
                       number of writes refused
    stats              the service's queue length and cached shadows, the process's RSS
    quit               stop (also on EOF, SIGINT or SIGTERM)

Logs (warnings and up) go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import raise_nofile
from bench.pki import FleetPKI, node_id
from broker import BrokerSettings, EmbeddedBroker, TLSFiles, freeze_long_lived
from shadow.server import (
    DesiredWrite,
    EmbeddedBus,
    ShadowRecord,
    ShadowService,
    ShadowSettings,
    ShadowStore,
    ShadowWrite,
)

__all__ = ["main"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.shadow_server", description=__doc__)
    p.add_argument(
        "--db",
        required=True,
        help="sqlite:///<path>, mysql://user:pw@host:port/db, or memory (no database: the "
        "service and broker alone, for comparison)",
    )
    p.add_argument("--pki", type=Path, required=True, help="the bench PKI (bench/pki.py)")
    p.add_argument("--port", type=int, default=0, help="MQTT over TLS port (0: a free one)")
    p.add_argument("--report-rate", type=float, default=1000.0, help="shadow.report_rate")
    p.add_argument("--report-burst", type=int, default=1000, help="shadow.report_burst")
    p.add_argument("--max-batch", type=int, default=2000, help="shadow.max_batch")
    p.add_argument("--max-queue", type=int, default=100_000, help="shadow.max_queue")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop")
    return p.parse_args(argv)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class MemoryStore:
    """A store that keeps nothing durable: what the service costs without a database."""

    def __init__(self) -> None:
        self.rows: dict[str, ShadowRecord] = {}

    async def load(self, node_ids: Collection[str]) -> dict[str, ShadowRecord]:
        return {n: self.rows[n] for n in node_ids if n in self.rows}

    async def commit(self, writes: Sequence[ShadowWrite]) -> None:
        for write in writes:
            self.rows[write.record.node_id] = write.record
        await asyncio.sleep(0)

    async def node_ids(self) -> list[str]:
        return sorted(self.rows)

    async def ping(self) -> None:
        return None


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[ShadowStore]:
    if url == "memory":
        yield MemoryStore()
        return
    from shadow.server import Database, SqlShadowStore

    async with Database.open(url) as db:
        yield SqlShadowStore(db)


async def _desire(service: ShadowService, count: int, tag: str) -> dict[str, Any]:
    writes = [DesiredWrite(node_id(i), {"bench": tag}) for i in range(count)]
    started = time.time()
    results = await service.write_desired_many(writes)
    returned = time.time()
    refused = [r for r in results if isinstance(r, Exception)]
    return {
        "cmd": "desire",
        "writes": count,
        "start": started,
        "end": returned,
        "refused": len(refused),
        "first_error": repr(refused[0]) if refused else None,
    }


async def _serve(args: argparse.Namespace) -> None:
    pki = FleetPKI(args.pki)
    files = TLSFiles(ca=pki.ca_file, cert=pki.server_cert, key=pki.server_key, crl=pki.crl_file)
    broker_settings = BrokerSettings(host="127.0.0.1", port=args.port, max_connections=19_000)
    settings = ShadowSettings(
        report_rate=args.report_rate,
        report_burst=args.report_burst,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with (
        EmbeddedBroker(broker_settings, files) as broker,
        open_store(args.db) as store,
        ShadowService(EmbeddedBus(broker), store, settings) as service,
    ):
        gc_task = asyncio.create_task(
            freeze_long_lived(
                broker_settings.gc_freeze_interval, broker_settings.gc_full_collect_interval
            )
        )
        _say({"ready": True, "port": broker.ports["mqtts"], "pid": os.getpid()})
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                line_task = asyncio.create_task(reader.readline())
                done, _ = await asyncio.wait(
                    {line_task, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if line_task not in done:
                    line_task.cancel()
                    break
                words = line_task.result().decode().split()
                if not words or words[0] == "quit":
                    break
                if words[0] == "desire":
                    _say(await _desire(service, int(words[1]), words[2]))
                elif words[0] == "stats":
                    _say(
                        {
                            "cmd": "stats",
                            "queue": len(service._queue),
                            "cached": len(service._cache),
                            "rss_kib": _rss_kib(),
                        }
                    )
                else:
                    _say({"cmd": words[0], "error": "unknown command"})
        finally:
            stopping.cancel()
            gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gc_task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(_serve(args))
        else:
            asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

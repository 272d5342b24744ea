"""A flood of refused TLS handshakes against our broker: memory after it, real nodes during it.

    .venv/bin/python -m bench.handshake_flood --refused 20000

Starts ``baetyl broker run`` (the server process, with its gc.freeze policy) on a free loopback
port and measures, phase by phase (see bench/README.md, "Handshake flood"):

1. warm-up: a few refused handshakes and node connects (first-use allocations);
2. quiet: ``--probes`` connects of real mTLS nodes (TLS, CONNECT, CONNACK 0, DISCONNECT), one
   at a time → connect p50/p99; broker RSS → baseline;
3. flood: a separate process makes ``--refused`` handshakes without a client certificate,
   ``--concurrency`` at a time from ``--flood-source`` (127.0.0.2: another address than the
   nodes' 127.0.0.1), while this one keeps probing real nodes → connect p99 during
   the flood, peak RSS (sampled every 50 ms);
4. after: ``--after`` seconds idle (several gc policy ticks) → RSS after, and what is left per
   refused handshake; the broker's log lines about refusals (rate-limited: a handful).

Every phase is bounded (``--deadline``). Prints a table and writes a JSON to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import ssl
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import mqtt
from bench.brokers import rss_kib, start_broker
from bench.pki import FleetPKI, ensure_pki, node_id

ROOT = Path(__file__).resolve().parent


def _client_context(pki: FleetPKI, node: int | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=pki.ca_file)
    if node is not None:
        context.load_cert_chain(pki.node_file(node))
    return context


async def _refused(port: int, context: ssl.SSLContext, source: str = "127.0.0.1") -> bool:
    """One handshake without a certificate; True when the broker refused it."""
    try:
        async with asyncio.timeout(15):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=context,
                server_hostname="localhost",
                local_addr=(source, 0),
            )
            try:
                await reader.read(1)  # TLS 1.3: the verdict comes after the client's Finished
            finally:
                writer.close()
    except (OSError, ssl.SSLError, TimeoutError):
        return True
    return True  # closed by the broker without a byte: refused as well


def _flood(
    port: int, pki_root: str, count: int, concurrency: int, source: str, result: list[float]
) -> None:
    """Process body: ``count`` refused handshakes, ``concurrency`` in flight."""

    async def run() -> None:
        context = _client_context(FleetPKI(Path(pki_root)), None)
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await _refused(port, context, source)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.append(time.monotonic() - started)

    asyncio.run(run())


async def _connect_node(port: int, context: ssl.SSLContext, client_id: str) -> float:
    """Seconds from TCP connect to CONNACK 0 for one real node, then a clean disconnect."""
    started = time.perf_counter()
    async with asyncio.timeout(15):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        try:
            writer.write(mqtt.connect(client_id))
            await writer.drain()
            header = await reader.readexactly(4)
            elapsed = time.perf_counter() - started
            if header[0] >> 4 != mqtt.CONNACK or header[3] != 0:
                raise RuntimeError(f"{client_id} was not accepted: {header.hex()}")
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
        finally:
            writer.close()
    return elapsed


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _probe(
    port: int, contexts: list[ssl.SSLContext], count: int | None, until: float, pause: float
) -> list[float]:
    """Connect real nodes one at a time: ``count`` of them, or until ``until`` (monotonic)."""
    samples: list[float] = []
    while (count is None or len(samples) < count) and time.monotonic() < until:
        index = len(samples) % len(contexts)
        samples.append(await _connect_node(port, contexts[index], node_id(index)))
        await asyncio.sleep(pause)
    return samples


async def _sample_rss(pid: int, stop: asyncio.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib(pid))
        await asyncio.sleep(0.05)


async def _measure(
    args: argparse.Namespace, pki: FleetPKI, port: int, pid: int
) -> dict[str, object]:
    contexts = [_client_context(pki, i) for i in range(args.nodes)]
    anonymous = _client_context(pki, None)
    deadline = time.monotonic() + args.deadline
    # 1. warm-up
    for _ in range(50):
        await _refused(port, anonymous)
    await _probe(port, contexts, 20, deadline, 0.0)
    await asyncio.sleep(args.after)
    # 2. quiet
    quiet = await _probe(port, contexts, args.probes, deadline, args.pause)
    baseline = rss_kib(pid)
    # 3. flood
    manager = multiprocessing.Manager()
    took = manager.list()
    flood = multiprocessing.Process(
        target=_flood,
        args=(port, str(pki.root), args.refused, args.concurrency, args.flood_source, took),
    )
    stop = asyncio.Event()
    peak = [baseline]
    sampler = asyncio.create_task(_sample_rss(pid, stop, peak))
    flood.start()
    during: list[float] = []
    while flood.is_alive() and time.monotonic() < deadline:
        during += await _probe(port, contexts, 1, deadline, args.pause)
    flood.join(timeout=max(0.0, deadline - time.monotonic()))
    if flood.is_alive():
        flood.terminate()
        flood.join()
    # 4. after
    await asyncio.sleep(args.after)
    stop.set()
    await sampler
    after = rss_kib(pid)
    flood_seconds = took[0] if took else None
    manager.shutdown()
    return {
        "quiet": quiet,
        "during": during,
        "baseline_kib": baseline,
        "peak_kib": peak[0],
        "after_kib": after,
        "flood_seconds": flood_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refused", type=int, default=20_000, help="refused handshakes")
    parser.add_argument("--concurrency", type=int, default=32, help="refused ones in flight")
    parser.add_argument(
        "--flood-source",
        default="127.0.0.2",
        help="source address of the flood (the real nodes connect from 127.0.0.1)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the broker, e.g. broker.handshakes_per_source=16 (repeatable)",
    )
    parser.add_argument("--nodes", type=int, default=4, help="real mTLS nodes that probe")
    parser.add_argument("--probes", type=int, default=200, help="quiet connects measured")
    parser.add_argument("--pause", type=float, default=0.02, help="s between two probes")
    parser.add_argument("--after", type=float, default=8.0, help="s idle before RSS after")
    parser.add_argument("--deadline", type=float, default=600.0, help="s for the whole run")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    pki = ensure_pki(args.out_dir / "pki", max(args.nodes, 1), log=False)
    workdir = args.out_dir / "handshake_flood"
    broker = start_broker("ours", pki, workdir, tuple(args.set))
    try:
        figures = asyncio.run(_measure(args, pki, broker.port, broker.pid))
    finally:
        broker.stop()
    log_lines = [
        line
        for line in broker.log_path.read_text(errors="replace").splitlines()
        if "refused" in line
    ]
    quiet: list[float] = figures["quiet"]  # type: ignore[assignment]
    during: list[float] = figures["during"]  # type: ignore[assignment]
    baseline, peak, after = (int(figures[k]) for k in ("baseline_kib", "peak_kib", "after_kib"))  # type: ignore[call-overload]
    nan = float("nan")
    q50, d50 = statistics.median(quiet), statistics.median(during) if during else nan
    q99, d99 = _percentile(quiet, 0.99), _percentile(during, 0.99) if during else nan
    took = figures["flood_seconds"] or nan
    mib = f"{baseline / 1024:.1f} / {peak / 1024:.1f} / {after / 1024:.1f} MiB"
    rows = [
        (
            "refused handshakes",
            f"{args.refused} ({args.concurrency} in flight, from {args.flood_source})",
        ),
        ("flood took", f"{took:.1f} s ({args.refused / took:.0f} refusals/s)"),
        ("RSS baseline / peak / after", mib),
        ("left after, per refused handshake", f"{(after - baseline) * 1024 / args.refused:.0f} B"),
        ("connect p50 quiet / flood", f"{q50 * 1e3:.1f} / {d50 * 1e3:.1f} ms"),
        ("connect p99 quiet / flood", f"{q99 * 1e3:.1f} / {d99 * 1e3:.1f} ms"),
        ("connects measured quiet / flood", f"{len(quiet)} / {len(during)}"),
        ("p99 ratio flood / quiet", f"{d99 / q99:.2f}"),
        ("broker log lines about refusals", str(len(log_lines))),
        ("broker settings", " ".join(args.set) or "defaults"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out_dir / f"handshake_flood-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "date": stamp,
                "command": " ".join(sys.argv),
                "commit": commit,
                "machine": platform.platform(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "figures": figures,
                "log_lines": log_lines[:50],
            },
            indent=1,
        )
    )
    print(f"written: {out}")


if __name__ == "__main__":
    main()

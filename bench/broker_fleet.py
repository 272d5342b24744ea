"""Fleet-scale benchmark of the embedded broker, side by side with Mosquitto (see bench/README.md).

.venv/bin/python -m bench.broker_fleet --nodes 1000,5000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import pyspy
from bench.brokers import (
    BROKERS,
    CLK_TCK,
    RunningBroker,
    check_mtls,
    cpu_seconds,
    listen_overflows,
    machine_ticks,
    mosquitto_version,
    rss_kib,
    start_broker,
)
from bench.fleet import Fleet, FleetTimeout
from bench.loadgen import raise_nofile
from bench.pki import ensure_pki, node_id
from bench.report import format_table, plot, publish, write_json
from bench.service import ServiceClient

RESULTS = Path(__file__).resolve().parent / "results"
DESIRE = b'{"version":"1","apps":[{"name":"bench-app","version":"1"}],"configs":[]}'


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.broker_fleet",
        description="N simulated nodes over mTLS (a certificate each) against our broker and "
        "Mosquitto: connect, fan-out, fan-in, memory and CPU, side by side.",
    )
    p.add_argument("--nodes", default="1000,5000", help="comma-separated fleet sizes")
    p.add_argument("--brokers", default="ours,mosquitto", help="comma-separated: ours,mosquitto")
    p.add_argument("--fanin-seconds", type=float, default=10.0, help="length of the fan-in phase")
    p.add_argument("--workers", type=int, default=0, help="load processes (0: one per 2,500)")
    p.add_argument("--concurrency", type=int, default=64, help="connects in flight, in total")
    p.add_argument("--connect-timeout", type=float, default=0, help="0: max(60, N/50) s")
    p.add_argument("--fanout-timeout", type=float, default=0, help="0: max(30, N/100) s")
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading RSS")
    p.add_argument("--pki-dir", type=Path, default=RESULTS / "pki", help="certificate cache")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where results are written")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also write the run's summary to bench/published/ (commit it with RESULTS.md)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample our broker with py-spy per phase (profile-<phase>-<N>.txt + summary)",
    )
    p.add_argument(
        "--replot",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: print the tables and draw the plot from result files (later files "
        "replace earlier figures for the same broker and N)",
    )
    args = p.parse_args(argv)
    args.node_counts = [int(x.replace("_", "")) for x in args.nodes.split(",") if x]
    args.broker_names = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for name in args.broker_names:
        if name not in BROKERS:
            p.error(f"unknown broker {name!r}; choose from {', '.join(BROKERS)}")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Phase:
    """CPU seconds of the broker process over one phase, optionally sampled by py-spy."""

    def __init__(self, run: dict[str, Any], broker: RunningBroker, name: str, prof: Path | None):
        self.run, self.broker, self.name = run, broker, name
        self.profiler = pyspy.PhaseProfiler(broker.pid, prof or Path(), enabled=prof is not None)
        self.cpu0 = 0.0
        self.ticks0 = (0, 0)

    def __enter__(self) -> Phase:
        self.profiler.__enter__()
        self.cpu0 = cpu_seconds(self.broker.pid)
        self.ticks0 = machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.broker.alive():
            self.run["cpu_s"][self.name] = round(cpu_seconds(self.broker.pid) - self.cpu0, 3)
        idle, total = machine_ticks()
        if total > self.ticks0[1]:
            share = (idle - self.ticks0[0]) / (total - self.ticks0[1])
            self.run.setdefault("machine_idle_pct", {})[self.name] = round(100 * share, 1)
            busy = (total - self.ticks0[1]) - (idle - self.ticks0[0])
            self.run.setdefault("machine_busy_s", {})[self.name] = round(busy / CLK_TCK, 2)
        self.profiler.__exit__()


async def measure(
    name: str, n: int, fleet: Fleet, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    pki_root: Path = args.pki_dir
    pki = ensure_pki(pki_root, n, log=False)
    run: dict[str, Any] = {"broker": name, "nodes": n, "cpu_s": {}, "status": "ok"}
    broker = start_broker(name, pki, workdir)
    service: ServiceClient | None = None
    connect_timeout = args.connect_timeout or max(60.0, n / 50)
    fanout_timeout = args.fanout_timeout or max(30.0, n / 100)

    def prof(phase: str) -> Path | None:
        if args.profile and name == "ours":
            return Path(args.out_dir) / f"profile-{phase}-{n}.txt"
        return None

    try:
        run["sanity"] = await check_mtls(pki, broker.port)
        log(f"{name} on port {broker.port} (pid {broker.pid}): {run['sanity']}")
        await asyncio.sleep(1.0)
        run["rss_base_kib"] = rss_kib(broker.pid)

        # -- connect ------------------------------------------------------------------------------
        overflows = listen_overflows()
        with Phase(run, broker, "connect", prof("connect")):
            deadline = time.monotonic() + connect_timeout
            replies = await fleet.command(
                "connect", "127.0.0.1", broker.port, deadline, limit=connect_timeout + 60
            )
        stats = [r[1] for r in replies]
        run["loadgen_cpu_s"] = {"connect": round(sum(r[-1] for r in replies), 2)}
        ok = sum(s["ok"] for s in stats)
        started = min(s["started"] for s in stats)
        lasts = [s["last"] for s in stats if s["last"] is not None]
        run["connect_listen_overflows"] = listen_overflows() - overflows
        run["connect_ok"] = ok
        run["connect_retries"] = sum(s["retries"] for s in stats)
        run["connect_errors"] = [s["errors"] for s in stats if s["errors"]]
        run["connect_elapsed_s"] = round((max(lasts) if lasts else time.monotonic()) - started, 3)
        run["connect_s"] = run["connect_elapsed_s"] if ok == n else None
        log(
            f"{name} N={n}: connected {ok}/{n} in {run['connect_elapsed_s']:.2f} s "
            f"(retries {run['connect_retries']}, listen queue overflows "
            f"{run['connect_listen_overflows']}, broker CPU {run['cpu_s'].get('connect')} s, "
            f"load generator CPU {run['loadgen_cpu_s']['connect']} s, "
            f"machine idle {run.get('machine_idle_pct', {}).get('connect')}%, "
            f"CPU of everything else {other_cpu(run, 'connect')} s)"
        )
        if ok == 0:
            run["status"] = "no node connected"
            return run

        await asyncio.sleep(args.settle)
        run["rss_idle_kib"] = rss_kib(broker.pid)
        run["rss_per_conn_kib"] = round((run["rss_idle_kib"] - run["rss_base_kib"]) / ok, 2)
        log(
            f"{name} N={n}: RSS {run['rss_base_kib'] / 1024:.0f} -> "
            f"{run['rss_idle_kib'] / 1024:.0f} MiB, {run['rss_per_conn_kib']:.1f} KiB/connection"
        )

        service = await ServiceClient.open(
            broker.port, pki.ca_file, pki.service_file, pki.service_client_id
        )
        run["service_suback"] = await service.subscribe("$baetyl/node/+/report", 1)

        # -- fan-out ------------------------------------------------------------------------------
        topics = [f"$baetyl/node/{node_id(i)}/desire" for i in range(n)]
        with Phase(run, broker, "fanout", prof("fanout")):
            deadline = time.monotonic() + fanout_timeout
            fleet.send("fanout", deadline)
            first, acked = await service.publish_all(topics, DESIRE, deadline)
            replies = await fleet.replies(limit=fanout_timeout + 60)
        stats = [r[1] for r in replies]
        run["loadgen_cpu_s"]["fanout"] = round(sum(r[-1] for r in replies), 2)
        wanted = sum(s["wanted"] for s in stats)
        received = sum(s["received"] for s in stats)
        lasts = [s["last"] for s in stats if s["last"] is not None]
        run["fanout_wanted"], run["fanout_received"] = wanted, received
        run["fanout_acked_s"] = None if acked is None else round(acked - first, 4)
        run["fanout_s"] = round(max(lasts) - first, 4) if lasts and received == wanted else None
        log(
            f"{name} N={n}: fan-out {received}/{wanted} in "
            f"{(max(lasts) - first) if lasts else float('nan'):.3f} s "
            f"(broker CPU {run['cpu_s'].get('fanout')} s)"
        )

        # -- fan-in -------------------------------------------------------------------------------
        seconds = args.fanin_seconds
        with Phase(run, broker, "fanin", prof("fanin")):
            start_at = time.monotonic() + 1.0
            fleet.send("fanin", start_at, seconds, 2.0)
            await asyncio.sleep(start_at - time.monotonic())
            reports0 = service.reports
            cpu0 = cpu_seconds(broker.pid)
            await asyncio.sleep(seconds)
            reports1 = service.reports
            cpu1 = cpu_seconds(broker.pid)
            replies = await fleet.replies(limit=seconds + 90)
        stats = [r[1] for r in replies]
        run["loadgen_cpu_s"]["fanin"] = round(sum(r[-1] for r in replies), 2)
        acks = sum(s["acks_in_window"] for s in stats)
        run["fanin_acks"] = acks
        run["fanin_msgs_per_s"] = round(acks / seconds, 1)
        run["fanin_service_msgs_per_s"] = round((reports1 - reports0) / seconds, 1)
        run["fanin_cpu_us_per_msg"] = round((cpu1 - cpu0) * 1e6 / acks, 1) if acks else None
        # Everything the nodes got a PUBACK for, minus what reached the service by the end of the
        # grace period: what the broker still holds (or lost) for the subscriber.
        acked_total = sum(s["acks_in_window"] + s["acks_after"] for s in stats)
        run["fanin_service_backlog"] = acked_total - (service.reports - reports0)
        run["fanin_lost_connections"] = sum(s["lost_connections"] for s in stats)
        run["rss_after_kib"] = rss_kib(broker.pid)
        log(
            f"{name} N={n}: fan-in {run['fanin_msgs_per_s']:.0f} msg/s acked, "
            f"{run['fanin_service_msgs_per_s']:.0f} msg/s to the service "
            f"(broker CPU {run['cpu_s'].get('fanin')} s)"
        )
    except FleetTimeout as exc:
        run["status"] = f"load generator: {exc}"
        log(f"{name} N={n}: {run['status']}")
        raise
    except (OSError, ConnectionError, TimeoutError) as exc:
        run["status"] = f"{type(exc).__name__}: {exc}"
        log(f"{name} N={n}: {run['status']}")
    finally:
        if service is not None:
            service.close()
        if not broker.alive():
            run["status"] = f"broker exited: {broker.log_tail()}"
        broker.stop()
    try:
        await fleet.command("close", limit=60)
    except FleetTimeout:
        run["status"] += " (close timed out)"
    return run


def source() -> dict[str, Any]:
    """Which code our broker runs: the commit, uncommitted changes under broker/, PYTHONPATH."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except OSError:
            return "?"
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "broker_changes": git("status", "--short", "--", "broker"),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }


def other_cpu(run: dict[str, Any], phase: str) -> float | None:
    """CPU seconds the machine spent in a phase beyond the broker and the load generator."""
    busy = run.get("machine_busy_s", {}).get(phase)
    mine = run.get("cpu_s", {}).get(phase, 0.0) + run.get("loadgen_cpu_s", {}).get(phase, 0.0)
    return None if busy is None else round(busy - mine, 1)


def machine() -> dict[str, Any]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "mosquitto": mosquitto_version(),
        "nofile": os.sysconf("SC_OPEN_MAX"),
    }


async def main_async(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document: dict[str, Any] = {
        "date": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.broker_fleet", *sys.argv[1:]]),
        "machine": machine(),
        "ours_source": source(),
        "runs": [],
    }
    log(f"machine: {document['machine']}")
    log(f"our broker's code: {document['ours_source']}")
    runs: list[dict[str, Any]] = document["runs"]
    json_path = out_dir / f"broker_fleet-{stamp}.json"
    for n in args.node_counts:
        started = time.monotonic()
        pki = ensure_pki(args.pki_dir, n)
        log(f"PKI for {n} nodes ready in {time.monotonic() - started:.1f} s")
        workers = args.workers or math.ceil(n / 2500)
        fleet = Fleet(pki.root, n, workers, args.concurrency)
        fleet.start()
        try:
            prepared = await fleet.command("prepare", limit=600)
            log(
                f"{fleet.workers} workers loaded {n} client contexts "
                f"in {max(r[1] for r in prepared):.1f} s"
            )
            for name in args.broker_names:
                try:
                    runs.append(await measure(name, n, fleet, args, out_dir / "run" / name))
                except FleetTimeout:
                    runs.append({"broker": name, "nodes": n, "status": "load generator timeout"})
                    fleet.stop()
                    fleet = Fleet(pki.root, n, workers, args.concurrency)
                    fleet.start()
                    await fleet.command("prepare", limit=600)
                write_json(json_path, document)
        finally:
            fleet.stop()
        print("\n" + format_table(n, runs, args.broker_names) + "\n", flush=True)
        if args.profile and "ours" in args.broker_names:
            for phase in ("connect", "fanout", "fanin"):
                print(pyspy.summarise(out_dir / f"profile-{phase}-{n}.txt"), flush=True)
    write_json(json_path, document)
    log(f"results written to {json_path}")
    if args.publish:
        log(f"summary written to {publish(document, json_path.name)}")
    log(plot(out_dir / "broker_fleet.png", runs, args.broker_names))
    return 0


def replot(args: argparse.Namespace) -> int:
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for path in args.replot:
        for run in json.loads(path.read_text())["runs"]:
            merged[(run["broker"], run["nodes"])] = run
    runs = list(merged.values())
    names = [n for n in args.broker_names if any(r["broker"] == n for r in runs)]
    for n in sorted({r["nodes"] for r in runs}):
        print(format_table(n, runs, names) + "\n")
    print(plot(Path(args.out_dir) / "broker_fleet.png", runs, names))
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stop cleanly (brokers and workers too) on Ctrl-C and SIGTERM, even when started in the
    # background by a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.replot:
        return replot(args)
    raise_nofile()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

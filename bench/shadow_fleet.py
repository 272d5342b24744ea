"""Shadow service benchmark: desired fan-out and report → accepted latency (see bench/README.md).

.venv/bin/python -m bench.shadow_fleet --nodes 1000,10000 --db sqlite,mariadb \
    --rates 500,1000,2000,4000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import pyspy
from bench.api_cloud import ApiCloud
from bench.broker_fleet import machine, source
from bench.brokers import CLK_TCK, cpu_seconds, machine_ticks, rss_kib
from bench.fleet import Fleet, FleetTimeout
from bench.loadgen import raise_nofile
from bench.pki import ensure_pki
from bench.report import publish, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DBS = ("sqlite", "mariadb", "memory")
SUSTAINED_SHARE = 0.95  # accepted in the window >= 95 % of the target rate ...
SUSTAINED_P99_S = 1.0  # ... and p99 report -> accepted under 1 s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.shadow_fleet",
        description="N simulated nodes over mTLS against the shadow service (embedded broker + "
        "store): time from one desired write for every node to the last node receiving it, and "
        "report -> report/accepted latency at given report rates, with SQLite and MariaDB.",
    )
    p.add_argument("--nodes", default="1000", help="comma-separated fleet sizes")
    p.add_argument(
        "--db",
        default="sqlite,mariadb",
        help="comma-separated: sqlite,mariadb,memory (no database)",
    )
    p.add_argument("--rates", default="500,1000,2000,4000", help="reports/s, in total")
    p.add_argument("--report-seconds", type=float, default=10.0, help="length of each rate step")
    p.add_argument("--grace", type=float, default=5.0, help="wait for late answers (s)")
    p.add_argument("--fanouts", type=int, default=3, help="desired writes to time per run")
    p.add_argument(
        "--stop-after-fail",
        type=int,
        default=1,
        help="skip higher rates after this many consecutive unsustained ones (0: never)",
    )
    p.add_argument("--workers", type=int, default=0, help="load processes (0: one per 2,500)")
    p.add_argument("--concurrency", type=int, default=64, help="connects in flight, in total")
    p.add_argument("--connect-timeout", type=float, default=0, help="0: max(60, N/50) s")
    p.add_argument("--fanout-timeout", type=float, default=30.0, help="per desired write (s)")
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds after connecting")
    p.add_argument("--report-rate", type=float, default=1000.0, help="server shadow.report_rate")
    p.add_argument("--report-burst", type=int, default=1000, help="server shadow.report_burst")
    p.add_argument(
        "--via",
        choices=("service", "api"),
        default="service",
        help="service: desired writes through the shadow service's Python interface "
        "(bench.shadow_server); api: baetyl up, nodes created and every write made through "
        "the management API (POST /v1/apps matching every node)",
    )
    p.add_argument("--server-loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument(
        "--mariadb", default="mysql://root:@127.0.0.1:3306", help="server URL (no database)"
    )
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
        help="sample the server with py-spy during the fan-outs and each rate "
        "(shadow-profile-<db>-<N>-<phase>.txt + summary)",
    )
    args = p.parse_args(argv)
    args.node_counts = [int(x.replace("_", "")) for x in args.nodes.split(",") if x]
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    args.rate_list = [float(x.replace("_", "")) for x in args.rates.split(",") if x]
    for name in args.dbs:
        if name not in DBS:
            p.error(f"unknown database {name!r}; choose from {', '.join(DBS)}")
        if name == "memory" and args.via == "api":
            p.error("--via api runs baetyl up, which needs a database: use sqlite or mariadb")
    if args.via == "api" and args.server_loop != "asyncio":
        p.error("--server-loop applies to bench.shadow_server only, not to --via api")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the database --------------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, args: argparse.Namespace, n: int) -> Iterator[str]:
    """A fresh database URL for one run, removed afterwards."""
    if kind == "memory":
        yield "memory"
        return
    if kind == "sqlite":
        path = Path(args.out_dir).resolve() / f"shadow-bench-{n}-{secrets.token_hex(3)}.db"
        try:
            yield f"sqlite://{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    import pymysql

    base = args.mariadb.rstrip("/")
    rest = base.removeprefix("mysql://")
    creds, _, hostport = rest.rpartition("@")
    user, _, password = creds.partition(":")
    host, _, port = hostport.partition(":")
    name = f"pybaetyl_bench_{secrets.token_hex(4)}"
    admin = pymysql.connect(
        host=host, port=int(port or 3306), user=user or "root", password=password
    )
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def mariadb_version(args: argparse.Namespace) -> str:
    try:
        import pymysql

        rest = args.mariadb.rstrip("/").removeprefix("mysql://")
        creds, _, hostport = rest.rpartition("@")
        user, _, password = creds.partition(":")
        host, _, port = hostport.partition(":")
        conn = pymysql.connect(
            host=host, port=int(port or 3306), user=user or "root", password=password
        )
        with conn.cursor() as cursor:
            cursor.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog")
            row = cursor.fetchone()
        conn.close()
        return f"{row[0]} (innodb_flush_log_at_trx_commit={row[1]}, sync_binlog={row[2]})"
    except Exception as exc:
        return f"unknown ({exc})"


# -- the server process --------------------------------------------------------------------------


class Server:
    """bench.shadow_server in a subprocess, driven by lines on its stdin."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    @classmethod
    async def start(cls, db_url: str, args: argparse.Namespace, log_path: Path) -> Server:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.shadow_server",
                "--db",
                db_url,
                "--pki",
                str(args.pki_dir),
                "--report-rate",
                str(args.report_rate),
                "--report-burst",
                str(args.report_burst),
                "--loop",
                args.server_loop,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                limit=1 << 20,
            )
        server = cls(process, log_path)
        ready = await server.read(60)
        if not ready.get("ready"):
            raise RuntimeError(f"the server did not start: {ready}\n{server.log_tail()}")
        server.port = int(ready["port"])
        return server

    async def read(self, limit: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(limit):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the server exited:\n{self.log_tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, line: str, limit: float) -> dict[str, Any]:
        self.send(line)
        return await self.read(limit)

    async def prepare(self, n: int) -> dict[str, Any]:
        """Nothing to set up: the service takes any node the CA certified."""
        return {}

    async def desire(self, n: int, tag: str) -> dict[str, Any]:
        """One `write_desired_many` of `{"bench": tag}` for nodes 0..n-1 (see shadow_server)."""
        return await self.command(f"desire {n} {tag}", 600)

    async def queue(self) -> int | None:
        """The service's queue length."""
        return int((await self.command("stats", 30))["queue"])

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(OSError, RuntimeError):
                self.send("quit")
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


Cloud = Server | ApiCloud


def mariadbd_pid() -> int | None:
    """The local MariaDB server's pid, to count its CPU (None if not found)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("mariadbd", "mysqld"):
                    return int(entry.name)
    return None


class Phase:
    """Server (and MariaDB) CPU seconds and the machine's idle and busy time over one phase."""

    def __init__(self, server: Cloud, profile: Path | None) -> None:
        self.server = server
        self.profiler = pyspy.PhaseProfiler(server.pid, profile or Path(), enabled=bool(profile))
        self.cpu_s = 0.0
        self.db_cpu_s = 0.0
        self.idle_pct = 0.0
        self.busy_s = 0.0
        self._cpu0 = 0.0
        self._db0 = 0.0
        self._db_pid = mariadbd_pid()
        self._ticks0 = (0, 0)

    def __enter__(self) -> Phase:
        self.profiler.__enter__()
        self._cpu0 = cpu_seconds(self.server.pid)
        self._db0 = cpu_seconds(self._db_pid) if self._db_pid else 0.0
        self._ticks0 = machine_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server.alive():
            self.cpu_s = round(cpu_seconds(self.server.pid) - self._cpu0, 3)
        if self._db_pid:
            with contextlib.suppress(OSError):
                self.db_cpu_s = round(cpu_seconds(self._db_pid) - self._db0, 3)
        idle, total = machine_ticks()
        if total > self._ticks0[1]:
            self.idle_pct = round(100 * (idle - self._ticks0[0]) / (total - self._ticks0[1]), 1)
            busy = (total - self._ticks0[1]) - (idle - self._ticks0[0])
            self.busy_s = round(busy / CLK_TCK, 2)
        self.profiler.__exit__()


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- one run: one database, one fleet size ---------------------------------------------------------


async def measure(db: str, n: int, fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    run: dict[str, Any] = {
        "db": db,
        "via": args.via,
        "nodes": n,
        "status": "ok",
        "fanouts": [],
        "rates": [],
    }
    out_dir = Path(args.out_dir)
    connect_timeout = args.connect_timeout or max(60.0, n / 50)

    def prof(phase: str) -> Path | None:
        return out_dir / f"shadow-profile-{db}-{n}-{phase}.txt" if args.profile else None

    with database(db, args, n) as url:
        run["db_url"] = url
        kind = ApiCloud if args.via == "api" else Server
        log_path = out_dir / "run" / f"shadow-{args.via}-{db}-{n}.log"
        server: Cloud = await kind.start(url, args, log_path)
        try:
            log(f"{db} N={n}: server pid {server.pid} on port {server.port} ({url})")
            await asyncio.sleep(1.0)
            run["rss_base_kib"] = rss_kib(server.pid)
            run["prepare"] = await server.prepare(n)
            if run["prepare"]:
                log(f"{db} N={n}: through the API: {run['prepare']}")

            # -- connect --------------------------------------------------------------------------
            with Phase(server, None) as phase:
                deadline = time.monotonic() + connect_timeout
                replies = await fleet.command(
                    "connect", "127.0.0.1", server.port, deadline, limit=connect_timeout + 60
                )
            stats = [r[1] for r in replies]
            ok = sum(s["ok"] for s in stats)
            lasts = [s["last"] for s in stats if s["last"] is not None]
            started = min(s["started"] for s in stats)
            run["connect_ok"] = ok
            run["connect_s"] = round((max(lasts) if lasts else time.monotonic()) - started, 2)
            run["connect_server_cpu_s"] = phase.cpu_s
            run["connect_errors"] = [s["errors"] for s in stats if s["errors"]]
            log(
                f"{db} N={n}: connected {ok}/{n} in {run['connect_s']} s "
                f"(server CPU {phase.cpu_s} s, retries {sum(s['retries'] for s in stats)})"
            )
            if ok < n:
                run["status"] = f"only {ok}/{n} connected"
                if ok == 0:
                    return run
            await asyncio.sleep(args.settle)  # presence writes of the connect settle
            await drain(server, 60)
            run["rss_idle_kib"] = rss_kib(server.pid)

            # -- desired fan-out ------------------------------------------------------------------
            with Phase(server, prof("fanout")) as phase:
                for k in range(args.fanouts):
                    run["fanouts"].append(await fanout(server, fleet, n, k, args))
                    await asyncio.sleep(1.0)
            run["fanout_server_cpu_s"] = phase.cpu_s
            done = [f["to_last_node_s"] for f in run["fanouts"] if f["to_last_node_s"] is not None]
            run["fanout_s"] = sorted(done)[len(done) // 2] if done else None
            run["fanout_max_s"] = max(done) if done else None

            # -- reports at each rate -------------------------------------------------------------
            fails = 0
            for rate in args.rate_list:
                if args.stop_after_fail and fails >= args.stop_after_fail:
                    run["rates"].append({"target": rate, "skipped": True})
                    continue
                step = await reports(server, fleet, n, rate, args, prof(f"reports{rate:.0f}"))
                run["rates"].append(step)
                fails = 0 if step["sustained"] else fails + 1
                await drain(server, 60)
            good = [s["target"] for s in run["rates"] if s.get("sustained")]
            run["highest_sustained"] = max(good) if good else None
            run["rss_after_kib"] = rss_kib(server.pid)
        except FleetTimeout as exc:
            run["status"] = f"load generator: {exc}"
            log(f"{db} N={n}: {run['status']}")
            raise
        except (OSError, RuntimeError, TimeoutError, KeyError) as exc:
            run["status"] = f"{type(exc).__name__}: {exc}"
            log(f"{db} N={n}: {run['status']}")
        finally:
            if not server.alive():
                run["status"] = f"server exited: {server.log_tail()}"
            await server.stop()
            run["server_log_tail"] = server.log_tail(5)
    with contextlib.suppress(FleetTimeout):
        await fleet.command("close", limit=60)
    return run


async def drain(server: Cloud, limit: float) -> None:
    """Wait until the service's queue is empty (bounded)."""
    deadline = time.monotonic() + limit
    while True:
        queue = await server.queue()
        if queue is None:  # not visible (the API cloud): give it the settle time
            await asyncio.sleep(3.0)
            return
        if queue == 0 or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def fanout(
    server: Cloud, fleet: Fleet, n: int, k: int, args: argparse.Namespace
) -> dict[str, Any]:
    tag = f"t{k}-{secrets.token_hex(4)}"
    await fleet.command("arm", tag.encode(), limit=30)
    write = asyncio.create_task(server.desire(n, tag))
    deadline = time.monotonic() + args.fanout_timeout
    fleet.send("tagged", deadline)
    async with asyncio.timeout(args.fanout_timeout + 60):
        wrote = await write
    replies = await fleet.replies(limit=args.fanout_timeout + 60)
    stats = [r[1] for r in replies]
    received = sum(s["received"] for s in stats)
    wanted = sum(s["wanted"] for s in stats)
    lasts = [s["last"] for s in stats if s["last"] is not None]
    firsts = [s["first"] for s in stats if s["first"] is not None]
    result = {
        "tag": tag,
        "wanted": wanted,
        "received": received,
        "write_returned_s": round(wrote["end"] - wrote["start"], 4),
        "refused": wrote["refused"],
        "first_error": wrote["first_error"],
        "to_first_node_s": round(min(firsts) - wrote["start"], 4) if firsts else None,
        "to_last_node_s": (
            round(max(lasts) - wrote["start"], 4) if lasts and received == wanted else None
        ),
        "partial_last_s": round(max(lasts) - wrote["start"], 4) if lasts else None,
    }
    log(
        f"  fan-out {k + 1}: {received}/{wanted} nodes, write start -> last node "
        f"{result['partial_last_s']} s (first node {result['to_first_node_s']} s), "
        f"the write returned after {result['write_returned_s']} s, "
        f"refused {wrote['refused']}"
    )
    return result


async def reports(
    server: Cloud,
    fleet: Fleet,
    n: int,
    rate: float,
    args: argparse.Namespace,
    profile: Path | None,
) -> dict[str, Any]:
    seconds = args.report_seconds
    with Phase(server, profile) as phase:
        start_at = time.monotonic() + 0.5
        for pipe, share in zip(fleet.pipes, shares(fleet, n), strict=True):
            pipe.send(("reports", start_at, seconds, rate * share, args.grace))
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu0 = cpu_seconds(server.pid)
        await asyncio.sleep(seconds)
        cpu_window = cpu_seconds(server.pid) - cpu0
        queue_at_end = await server.queue()
        replies = await fleet.replies(limit=seconds + args.grace + 60)
    stats = [r[1] for r in replies]
    latencies = sorted(x for s in stats for x in s["latencies"])
    rejected: dict[str, int] = {}
    for s in stats:
        for code, count in s["rejected"].items():
            rejected[code] = rejected.get(code, 0) + count
    in_window = sum(s["accepted_in_window"] for s in stats)
    sent = sum(s["sent"] for s in stats)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    step: dict[str, Any] = {
        "target": rate,
        "seconds": seconds,
        "sent_per_s": round(sent / seconds, 1),
        "accepted_per_s": round(in_window / seconds, 1),
        "accepted": len(latencies),
        "rejected": rejected,
        "unanswered": sum(s["unanswered"] for s in stats),
        "unknown_answers": sum(s["unknown_answers"] for s in stats),
        "lost_connections": sum(s["lost_connections"] for s in stats),
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "queue_at_end": queue_at_end,
        "server_cpu_pct": round(100 * cpu_window / seconds, 1),
        "server_cpu_s": phase.cpu_s,
        "machine_idle_pct": phase.idle_pct,
        "loadgen_cpu_s": round(sum(r[-1] for r in replies), 2),
        "mariadbd_cpu_s": phase.db_cpu_s,
    }
    # Kernel (loopback TCP, fsync), the driver, and anything else running on the machine.
    step["other_cpu_s"] = round(
        phase.busy_s - phase.cpu_s - step["loadgen_cpu_s"] - phase.db_cpu_s, 2
    )
    step["sustained"] = bool(
        in_window >= SUSTAINED_SHARE * rate * seconds
        and p99 is not None
        and p99 < SUSTAINED_P99_S
        and not step["unanswered"]
    )
    log(
        f"  reports at {rate:.0f}/s: sent {step['sent_per_s']:.0f}/s, accepted "
        f"{step['accepted_per_s']:.0f}/s, p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, "
        f"max {step['max_ms']} ms, rejected {rejected or 0}, unanswered {step['unanswered']}, "
        f"server CPU {step['server_cpu_pct']} %, MariaDB CPU {phase.db_cpu_s} s, machine idle "
        f"{phase.idle_pct} %, CPU of everything else {step['other_cpu_s']} s -> "
        f"{'sustained' if step['sustained'] else 'NOT sustained'}"
    )
    return step


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def shares(fleet: Fleet, n: int) -> list[float]:
    """Each worker's share of the fleet (Fleet splits the nodes in equal slices, the last short)."""
    per = math.ceil(n / fleet.workers)
    counts = [min(per, n - w * per) for w in range(len(fleet.pipes))]
    return [c / n for c in counts]


# -- tables --------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return fmt.format(value)
    return str(value)


def _db(run: dict[str, Any]) -> str:
    return f"{run['db']} via API" if run.get("via") == "api" else str(run["db"])


def format_tables(runs: Sequence[dict[str, Any]]) -> str:
    lines = [
        "Desired fan-out (one write for every node: write_desired_many, or via API one POST "
        "/v1/apps matching every node; wall clock, write start ->)",
        "",
        "| db | nodes | connect (s) | last node has it (s), median [each] | "
        "write returned (s) | server RSS idle (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        each = ", ".join(_f(f.get("to_last_node_s")) for f in r.get("fanouts", []))
        returned = ", ".join(_f(f.get("write_returned_s")) for f in r.get("fanouts", []))
        rss = r.get("rss_idle_kib")
        lines.append(
            f"| {_db(r)} | {r['nodes']:,} | {_f(r.get('connect_s'))} | "
            f"{_f(r.get('fanout_s'))} [{each}] | {returned} | "
            f"{_f(rss / 1024 if rss else None, '{:.0f}')} |"
        )
    lines += [
        "",
        "Reports (report -> report/accepted at the node; accepted/s counted in the window)",
        "",
        "| db | nodes | target/s | accepted/s | p50 (ms) | p99 (ms) | max (ms) | rejected | "
        "unanswered | server CPU (%) | machine idle (%) | other CPU (s) | sustained |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for s in r.get("rates", []):
            if s.get("skipped"):
                lines.append(
                    f"| {_db(r)} | {r['nodes']:,} | {s['target']:,.0f} | skipped "
                    "(a lower rate was not sustained) | | | | | | | | | |"
                )
                continue
            lines.append(
                f"| {_db(r)} | {r['nodes']:,} | {s['target']:,.0f} | "
                f"{s['accepted_per_s']:,.0f} | {_f(s['p50_ms'])} | {_f(s['p99_ms'])} | "
                f"{_f(s['max_ms'])} | {sum(s['rejected'].values())} | {s['unanswered']} | "
                f"{_f(s['server_cpu_pct'], '{:.0f}')} | {_f(s['machine_idle_pct'], '{:.0f}')} | "
                f"{_f(s.get('other_cpu_s'), '{:.1f}')} | {'yes' if s['sustained'] else 'no'} |"
            )
    lines += [
        "",
        "| db | nodes | highest sustained report rate (/s) | status |",
        "|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {_db(r)} | {r['nodes']:,} | {_f(r.get('highest_sustained'), '{:,.0f}')} | "
            f"{r['status'][:80]} |"
        )
    lines.append(
        f"\nsustained = accepted in the window >= {SUSTAINED_SHARE:.0%} of the target, "
        f"p99 < {SUSTAINED_P99_S:g} s, and every report answered within the grace period."
    )
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_started = time.time()
    document: dict[str, Any] = {
        "date": stamp,
        "command": " ".join([Path(sys.executable).name, "-m", "bench.shadow_fleet", *sys.argv[1:]]),
        "machine": {**machine(), "mariadb": mariadb_version(args)},
        "source": source(),
        "criteria": {"share": SUSTAINED_SHARE, "p99_s": SUSTAINED_P99_S},
        "runs": [],
    }
    log(f"machine: {document['machine']}")
    runs: list[dict[str, Any]] = document["runs"]
    json_path = out_dir / f"shadow_fleet-{stamp}.json"
    for n in args.node_counts:
        pki = ensure_pki(args.pki_dir, n)
        workers = args.workers or math.ceil(n / 2500)
        fleet = Fleet(pki.root, n, workers, args.concurrency, subscribe=("report/+",))
        fleet.start()
        try:
            prepared = await fleet.command("prepare", limit=600)
            seconds = max(r[1] for r in prepared)
            log(f"{fleet.workers} workers loaded {n} client contexts in {seconds:.1f} s")
            for db in args.dbs:
                started = time.monotonic()
                try:
                    run = await measure(db, n, fleet, args)
                except FleetTimeout:
                    run = {"db": db, "nodes": n, "status": "load generator timeout"}
                    fleet.stop()
                    fleet = Fleet(pki.root, n, workers, args.concurrency, subscribe=("report/+",))
                    fleet.start()
                    await fleet.command("prepare", limit=600)
                run["elapsed_s"] = round(time.monotonic() - started, 1)
                runs.append(run)
                write_json(json_path, document)
        finally:
            fleet.stop()
        if len(args.node_counts) > 1:
            print("\n" + format_tables([r for r in runs if r["nodes"] == n]) + "\n", flush=True)
    print("\n" + format_tables(runs), flush=True)
    if args.profile:
        for path in profiles(out_dir, run_started):
            print(pyspy.summarise(path), flush=True)
    write_json(json_path, document)
    log(f"results written to {json_path}")
    if args.publish:
        log(f"summary written to {publish(document, json_path.name)}")
    return 0


def profiles(out_dir: Path, since: float) -> list[Path]:
    """The profiles this run wrote (modified after `since`, a `time.time()`)."""
    return sorted(p for p in out_dir.glob("shadow-profile-*.txt") if p.stat().st_mtime >= since)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    raise_nofile()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

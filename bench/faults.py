"""The fault suite's scenarios with the long profile, run by hand (see bench/FAULTS.md).

.venv/bin/python -m bench.faults                      # 5,000 nodes, 2 agents, 3 cloud SIGKILLs
.venv/bin/python -m bench.faults --nodes 1000 --chaos-seconds 120

The same code as ``tests/faults`` (``tests.faults.scenarios``): ``baetyl up`` on a fresh MariaDB
database (127.0.0.1:3306, root), simulated nodes over mTLS in this process, real edge agents.
Both scenarios run in one world, to pay its setup (certificates, nodes created through the
API, first sync) once: convergence (faults, then every invariant), then the reconnect storm.
Writes ``bench/results/faults-<UTC>.json`` and the results section of ``bench/FAULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.sslproto
import dataclasses
import datetime as dt
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql

from bench.broker_fleet import machine, source
from bench.loadgen import CLIENT_SSL_BUFFER, raise_nofile
from bench.report import publish, write_json
from tests.faults.scenarios import convergence, storm, summary_line
from tests.faults.world import LONG, Profile, World
from tests.support.db import MYSQL_HOST, MYSQL_PORT, MYSQL_USER, Database

RESULTS = Path(__file__).resolve().parent / "results"
FAULTS_MD = Path(__file__).resolve().parent / "FAULTS.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description="Convergence, no loss and the reconnect storm (tests/faults) at fleet size: "
        "simulated nodes and real agents against baetyl up on MariaDB, with desired writes, "
        "disconnects and SIGKILLs of agents and of the cloud.",
    )
    p.add_argument("--profile", choices=["long", "ci"], default="long")
    p.add_argument("--nodes", type=int, default=None, help="simulated nodes (default: profile's)")
    p.add_argument("--chaos-seconds", type=float, default=None, help="length of the fault phase")
    p.add_argument("--cloud-kills", type=int, default=None, help="SIGKILLs of the cloud")
    p.add_argument("--scenarios", default="convergence,storm", help="comma-separated")
    p.add_argument(
        "--reconnect",
        choices=["agent", "full-jitter"],
        default="agent",
        help="the nodes' reconnect policy: the edge agent's (default) or full jitter, to compare",
    )
    p.add_argument("--out-dir", default=str(RESULTS), help="where the JSON goes")
    p.add_argument("--no-md", action="store_true", help="do not rewrite bench/FAULTS.md")
    p.add_argument("--workdir", default=None, help="keep the run's files (logs) here")
    return p.parse_args(argv)


def profile_of(args: argparse.Namespace) -> Profile:
    profile = LONG if args.profile == "long" else Profile()
    changes: dict[str, Any] = {}
    if args.nodes is not None:
        changes["nodes"] = args.nodes
    if args.chaos_seconds is not None:
        changes["chaos_seconds"] = args.chaos_seconds
    if args.cloud_kills is not None:
        changes["cloud_kills"] = args.cloud_kills
    changes["reconnect"] = args.reconnect
    return dataclasses.replace(profile, **changes)


class FreshDatabase:
    """A MariaDB database made for the run and dropped after it."""

    def __enter__(self) -> Database:
        self.name = f"pybaetyl_bench_faults_{secrets.token_hex(4)}"
        self.admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER,
                                     password="", autocommit=True)  # fmt: skip
        with self.admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")
        url = f"mysql://{MYSQL_USER}:@{MYSQL_HOST}:{MYSQL_PORT}/{self.name}"
        return Database("mysql", url, name=self.name)

    def __exit__(self, *exc: object) -> None:
        with self.admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {self.name}")
        self.admin.close()


async def run(profile: Profile, scenarios: list[str], workdir: Path) -> list[dict[str, Any]]:
    results = []
    with FreshDatabase() as database:
        async with World(workdir, database, profile) as world:
            print(f"[faults] world ready: {world.timings}", flush=True)
            for name in scenarios:
                started = time.monotonic()
                try:
                    result = await (convergence(world) if name == "convergence" else storm(world))
                except AssertionError as exc:  # a bound exceeded: keep what the others found
                    result = {"scenario": name, "error": str(exc), "problems": [str(exc)]}
                    results.append(result)
                    print(f"[faults] {name} FAILED: {exc}", flush=True)
                    break
                result["wall_s"] = round(time.monotonic() - started, 1)
                print(f"[faults] {summary_line(result)}", flush=True)
                for problem in result["problems"]:
                    print(f"[faults]   PROBLEM {problem}", flush=True)
                results.append(result)
    return results


def markdown(document: dict[str, Any]) -> Iterator[str]:
    """The results section of FAULTS.md for one run."""
    profile, host = document["profile"], document["machine"]
    yield (f"### {document['date']} — {profile['name']} profile, {profile['nodes']:,} nodes, "
           f"{profile['reconnect']} reconnects")  # fmt: skip
    yield ""
    yield f"- Command: `{document['command']}` ({document['total_s'] / 60:.1f} min in all)"
    yield (f"- Machine: {host['nproc']} CPUs, {host['memory_gib']} GiB, Python {host['python']}; "
           f"code: commit {document['source']['commit']} plus the working tree")  # fmt: skip
    yield f"- JSON: `bench/published/{document['file']}` (summary; full run in `bench/results/`)"
    for result in document["results"]:
        yield ""
        yield f"#### {result['scenario']}"
        yield ""
        yield "| figure | value |"
        yield "|---|---|"
        for key, value in _rows(result):
            yield f"| {key} | {value} |"


def _spread(figures: dict[str, Any]) -> str:
    return f"{figures['p50']} / {figures['p99']} / {figures['max']}"


def _rows(result: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if "error" in result:
        yield "**failed**", result["error"]
        return
    yield "nodes (simulated, with the probe)", f"{result['nodes']:,}"
    book = result.get("nodes_book", {})
    if result["scenario"] == "convergence":
        faults, kills = result["faults"], result["kills"]
        downs = ", ".join(f"{k['down_s']:.1f}" for k in kills)
        yield "real edge agents", result["agents"]
        yield "fault phase (s)", result["chaos_s"]
        yield "cloud SIGKILL + restart", f"{faults['cloud_sigkills']} (down {downs} s)"
        yield (
            "every node resynced after each restart (s)",
            _join(k["all_resynced_s"] for k in kills),
        )
        yield "agent SIGKILL + restart", faults["agent_sigkills"]
        yield "node disconnects", f"{faults['node_disconnects']:,}"
        yield "desired writes through the API", f"{faults['desired_writes']:,}"
        yield "random reports", f"{faults['random_reports']:,}"
        yield (
            "node sessions (connects) / failed attempts",
            (f"{book['connects']:,} / {book['connect_failures']:,}"),
        )
        yield "reports accepted", f"{result['reports_accepted']:,}"
        yield "desired documents applied", f"{book['desires_applied']:,}"
        yield (
            "accepted reports checked after each SIGKILL",
            _join(f"{k['accepted_reports_so_far']:,}" for k in kills),
        )
        yield "time to converge after the faults (s)", result["time_to_converge_s"]
        yield "rejected requests", book["rejected"] or "none"
    else:
        yield "dropped at once", f"{result['dropped']:,}"
        yield "reconnect policy", result["policy"]
        yield "all resynced (s)", result["time_to_resync_all_s"]
        yield "reconnected p50 / p99 / max (s)", _spread(result["reconnect_s"])
        yield "resynced p50 / p99 / max (s)", _spread(result["resync_s"])
        yield "failed connect attempts", result["connect_failures"]
        yield "probe answer before: p50 / p99 / max (s)", _spread(result["probe_answer_s_before"])
        yield "probe answer during: p50 / p99 / max (s)", _spread(result["probe_answer_s_during"])
        yield "probe PINGREQ round trip during (s)", _spread(result["probe_ping_rtt_s_during"])
        yield (
            "probe reports (over the 10 s bound)",
            (f"{result['probe_reports']} ({result['probe_over_bound']})"),
        )
    yield "**messages lost**", f"**{result['messages_lost']}**"
    yield "invariants failed", "; ".join(result["problems"]) or "none"


def _join(values: Iterator[Any]) -> str:
    return ", ".join(str(value) for value in values)


def write_markdown(document: dict[str, Any]) -> None:
    text = FAULTS_MD.read_text() if FAULTS_MD.exists() else f"# Faults\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    old, _, tail = rest.partition(END)
    section = "\n".join(markdown(document)) + "\n"
    FAULTS_MD.write_text(f"{head}{START}\n{section}\n{old.strip()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    # asyncio gives each TLS connection a 256 KiB read buffer: 1.25 GB for 5,000 nodes.
    asyncio.sslproto.SSLProtocol.max_size = CLIENT_SSL_BUFFER
    profile = profile_of(args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pybaetyl-faults-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        results = asyncio.run(run(profile, args.scenarios.split(","), workdir))
    document: dict[str, Any] = {
        "date": stamp,
        "command": " ".join([".venv/bin/python", "-m", "bench.faults", *sys.argv[1:]]),
        "machine": machine(),
        "source": source(),
        "profile": dataclasses.asdict(profile),
        "total_s": round(time.monotonic() - started, 1),
        "file": f"faults-{stamp}.json",
        "results": results,
    }
    write_json(Path(args.out_dir) / document["file"], document)
    if not args.no_md:  # the section written to FAULTS.md names the summary: publish it too
        publish(document, document["file"])
        write_markdown(document)
    failed = [r["scenario"] for r in results if r["problems"] or r.get("messages_lost")]
    print(f"[faults] {'FAILED: ' + ', '.join(failed) if failed else 'all invariants held'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

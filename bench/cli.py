"""How fast ``baetyl`` starts and how much the edge agent holds at rest, against the targets
``TARGETS`` names (``baetyl --help`` at most 0.15 s of CPU, an API command at most 0.3 s, the agent
at most 35 MiB resident).

    .venv/bin/python -m bench.cli [--runs 5] [--settle 10] [--baseline OTHER/bin/baetyl]

Three figures, each the median of ``--runs`` (processes measured from ``wait4``'s rusage: user +
system CPU and peak RSS of the process itself, wall time from start to exit):

1. ``baetyl --help``;
2. ``baetyl node list`` against a local cloud: ``baetyl up`` started here, in a temporary
   directory, on loopback and free ports (SQLite in its data directory), with a token from
   ``baetyl tokens create`` and one node created through the API;
3. the edge agent at rest: that node activated from its install command (``baetyl node init``,
   then the ``baetyl edge activate`` it prints), ``baetyl edge run`` (native engine, no app,
   function proxy on a free port) started, the node seen online through the API, ``--settle``
   seconds waited, then ``VmRSS`` read from ``/proc`` once a second, ``--runs`` times (median and
   largest), and ``VmHWM``, the peak since the agent started.

With ``--baseline``, every figure is taken for that ``baetyl`` too (another checkout's venv, e.g.
the main branch's), alternating run by run with ours, and the cloud is ours for both. Everything
started here is stopped at the end (SIGTERM, then SIGKILL), and the directory removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BAETYL = str(Path(sys.executable).with_name("baetyl"))
EPHEMERAL = [
    "--set", "broker.host=127.0.0.1", "--set", "broker.port=0",
    "--set", "api.host=127.0.0.1", "--set", "api.port=0",
    "--set", "api.activation_host=127.0.0.1", "--set", "api.activation_port=0",
]  # fmt: skip
PORT = re.compile(r"^\s+(mqtts|api|activation)\s+127\.0\.0\.1:(\d+)$", re.MULTILINE)
TARGETS = {"help_cpu": 0.15, "api_wall": 0.3, "agent_rss_mib": 35.0}
NODE_ONLINE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Run:
    """One finished process: exit code, CPU seconds (user + system), wall seconds, peak RSS."""

    code: int
    cpu: float
    wall: float
    max_rss_kib: int


# The process that starts a measured command: a bare interpreter (-S -I), because Linux carries
# the RSS peak of the process that forks over into its child's ru_maxrss across exec; forked from
# this benchmark (20 MiB and more) the child's own peak would not show below that.
LAUNCHER = """
import os, sys, time
started = time.monotonic()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - started
print(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss)
"""


def measure(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 60) -> Run:
    """Run ``argv`` to its end from the launcher and take its own rusage (``wait4``)."""
    done = subprocess.run(
        [sys.executable, "-S", "-I", "-c", LAUNCHER, *argv], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 4 or fields[0] != "0":
        raise SystemExit(f"{shlex.join(argv)} failed: {done.stderr[-2000:]}")
    return Run(int(fields[0]), float(fields[1]), float(fields[2]), int(fields[3]))


def vm_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/{pid}/status has no {field}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Cloud:
    """``baetyl up`` in ``workdir`` on free loopback ports, and a token for namespace bench."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_url = ""
        self.token = ""

    def start(self) -> None:
        out = self.workdir / "up.out"
        with out.open("wb") as stdout, (self.workdir / "up.err").open("wb") as stderr:
            self.proc = subprocess.Popen(
                [BAETYL, *EPHEMERAL, "up"], cwd=self.workdir, env=self.env, stdout=stdout,
                stderr=stderr,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in out.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.workdir / "up.err").read_text(errors="replace")[-2000:]
                raise SystemExit(f"baetyl up did not start: {err}")
            time.sleep(0.1)
        ports = dict(PORT.findall(out.read_text()))
        self.api_url = f"http://127.0.0.1:{ports['api']}"
        done = subprocess.run(
            [BAETYL, "tokens", "create", "--namespace", "bench"], cwd=self.workdir,
            env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        self.token = done.stdout.split()[-1]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(  # noqa: S310 # our own loopback URL
            f"{self.api_url}/v1{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def agent_rss(cloud: Cloud, baetyl: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Activate node ``name`` with ``baetyl``, run its agent, and sample its RSS at rest."""
    env = cloud.env
    cloud.request("POST", "/nodes", {"name": name})
    argv = shlex.split(cloud.request("GET", f"/nodes/{name}/init")["cmd"])
    argv = [a.replace("https://localhost:", "https://127.0.0.1:") for a in argv]
    state = cloud.workdir / name
    subprocess.run(
        [baetyl, *argv[1:], "--state-dir", str(state)], cwd=cloud.workdir, env=env,
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    log = cloud.workdir / f"{name}.log"
    with log.open("wb") as output:
        agent = subprocess.Popen(
            [baetyl, "edge", "run", "--state-dir", str(state), "--functions-port", "0"],
            cwd=cloud.workdir, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + NODE_ONLINE_TIMEOUT
        while not cloud.request("GET", f"/nodes/{name}").get("online"):
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent of {name} did not come online: {log.read_text()}")
            time.sleep(0.2)
        time.sleep(args.settle)
        samples = []
        for _ in range(args.runs):
            samples.append(vm_kib(agent.pid, "VmRSS"))
            time.sleep(1)
        peak = vm_kib(agent.pid, "VmHWM")
        modules = _loaded(agent.pid)
    finally:
        stop(agent)
    return {
        "rss_median_kib": statistics.median(samples),
        "rss_max_kib": max(samples),
        "hwm_kib": peak,
        "shared_objects": modules,
    }


def _loaded(pid: int) -> list[str]:
    """The extension modules and libraries mapped into the process (what its imports loaded)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if path.endswith(".so") or ".so." in path:
            names.add(path.split("site-packages/")[-1])
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median; default 5)")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds the agent rests online (default 10)"
    )
    parser.add_argument(
        "--baseline", metavar="BAETYL", help="another baetyl executable to measure alongside"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    contenders = {"ours": BAETYL}
    if args.baseline:
        contenders["baseline"] = str(Path(args.baseline).absolute())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAETYL_")}
    workdir = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    env["XDG_CONFIG_HOME"] = str(workdir / "xdg")  # no client.toml of this machine's user
    runs: dict[str, dict[str, list[Run]]] = {c: {"help": [], "api": []} for c in contenders}
    agents: dict[str, dict[str, Any]] = {}
    floor: list[Run] = []  # the interpreter's own start, which every command pays
    served: list[float] = []  # the same request from this process: the cloud's share
    cloud = Cloud(workdir, env)
    try:
        for _ in range(args.runs):
            floor.append(measure([sys.executable, "-c", "pass"], cwd=workdir, env=env))
            for contender, baetyl in contenders.items():
                runs[contender]["help"].append(measure([baetyl, "--help"], cwd=workdir, env=env))
        cloud.start()
        cloud.request("POST", "/nodes", {"name": "listed"})
        for _ in range(args.runs):
            started = time.monotonic()
            cloud.request("GET", "/nodes?pageNo=1&pageSize=200")
            served.append(time.monotonic() - started)
            for contender, baetyl in contenders.items():
                api = [baetyl, "node", "list", "--api-url", cloud.api_url, "--token", cloud.token]
                runs[contender]["api"].append(measure(api, cwd=workdir, env=env))
        for contender, baetyl in contenders.items():
            agents[contender] = agent_rss(cloud, baetyl, f"agent-{contender}", args)
    finally:
        cloud.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    _report(runs, agents, args)
    med = statistics.median
    cpu, wall = med(r.cpu for r in floor), med(r.wall for r in floor)
    rss = med(r.max_rss_kib for r in floor) / 1024
    print(f"for reference: '{sys.executable} -c pass' takes {cpu:.3f} s CPU, {wall:.3f} s wall, "
          f"{rss:.1f} MiB; the cloud answers the request of 'node list' in {med(served):.3f} s "
          "(from this process, connection included)")  # fmt: skip


def _report(
    runs: dict[str, dict[str, list[Run]]],
    agents: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    contenders = list(runs)
    med = statistics.median
    rows: list[tuple[str, list[float], float | None, str]] = []
    for what, label in (("help", "baetyl --help"), ("api", "baetyl node list")):
        target_cpu = TARGETS["help_cpu"] if what == "help" else None
        target_wall = TARGETS["api_wall"] if what == "api" else None
        rows.append((f"{label}: CPU (s)", [med(r.cpu for r in runs[c][what]) for c in contenders],
                     target_cpu, "{:.3f}"))  # fmt: skip
        rows.append((f"{label}: wall (s)", [med(r.wall for r in runs[c][what]) for c in contenders],
                     target_wall, "{:.3f}"))  # fmt: skip
        rows.append((f"{label}: peak RSS (MiB)",
                     [med(r.max_rss_kib for r in runs[c][what]) / 1024 for c in contenders],
                     None, "{:.1f}"))  # fmt: skip
    for key, label in (("rss_median_kib", "agent at rest: RSS, median (MiB)"),
                       ("rss_max_kib", "agent at rest: RSS, largest (MiB)"),
                       ("hwm_kib", "agent: peak RSS since start (MiB)")):  # fmt: skip
        target = TARGETS["agent_rss_mib"] if key == "rss_median_kib" else None
        rows.append((label, [agents[c][key] / 1024 for c in contenders], target, "{:.1f}"))
    header = ["figure", *contenders, "target"]
    if len(contenders) == 2:
        header.append("ours/baseline")
    print(f"median of {args.runs} runs; agent sampled {args.settle:g} s after it came online")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for label, values, target, fmt in rows:
        cells = [label, *(fmt.format(v) for v in values)]
        met = "" if target is None else (" met" if values[0] <= target else " MISSED")
        cells.append("" if target is None else f"<= {target:g}{met}")
        if len(values) == 2:
            cells.append(f"{values[0] / values[1]:.2f}" if values[1] else "-")
        print(" | ".join(cells))
    for contender in contenders:
        packages = sorted(
            {name.split("/")[0] for name in agents[contender]["shared_objects"] if name[0] != "/"}
        )
        print(f"{contender}: the agent maps extension modules of {', '.join(packages) or '-'}")


if __name__ == "__main__":
    main()

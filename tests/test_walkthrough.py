"""The README's walk-through, pasted as is into one bash shell, works from start to end.

The ``sh`` blocks of "Five-minute walk-through" (certificates, mosquitto) and of "Nodes and
apps through the management API", "The node side" and "Devices" run in order in one bash, as a
newcomer pastes them: the virtualenv's ``bin`` first on PATH (``. .venv/bin/activate``), the API's
address exported in ``BAETYL_API_URL`` before anything runs, and the README's own
``export BAETYL_API_TOKEN=...``. A real ``baetyl up`` serves them in the same directory. Only
the port numbers are changed, to free ones (8883, 9004, 8080, the node broker's 50010 and the
agent's function port), so that runs on one machine do not collide; a test fails if the README
stops naming them.

What the README promises is asserted: the operator sees the report accepted and the malformed
one rejected, another node's topic is refused, the resources are created, the node comes
online and its app serves the config's page, a device's message published with mosquitto_pub
to the node broker reaches the operator's mosquitto_sub on the node's uplink through a route,
and ``baetyl node get`` shows the route; every command succeeds but the one the README
says is refused (an ERR trap names each failure). Then, in the same shell with both variables
exported, the cloud's commands still work (they once failed on ``api_token``), a second
``baetyl up`` is refused for the busy data directory, deleting the app stops it, and deleting
the route and the device stops the node broker. Stopping
the cloud makes the agent say its connection closed; every file the walk-through wrote is
ignored by the repository's ``.gitignore``. The test ends every process it starts: the cloud,
the shell's background jobs (mosquitto_sub, the agent), the app the agent started and its
system app, the node broker.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from edge.engines.appdir import read_state
from tests.support.ci import missing
from tests.support.tools import require_tool
from tests.support.up import BAETYL

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
# The sections whose sh blocks make the walk-through, in the README's order.
FIRST, LAST = "## Five-minute walk-through", "## Beyond the walk-through"
SCRIPT_TIMEOUT = 240.0  # the whole walk-through, on a loaded machine
ERR = "@@ERR"


def walkthrough_blocks() -> list[str]:
    """The ``sh`` blocks between the walk-through's heading and the next part."""
    text = README.read_text(encoding="utf-8")
    start, end = text.index(FIRST), text.index(LAST)
    blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.MULTILINE | re.DOTALL)
    assert len(blocks) == 4, "the walk-through has four sh blocks: mosquitto, API, node, devices"
    return blocks


def free_ports(count: int) -> list[int]:
    """``count`` free ports below the ephemeral range.

    They are bound only later (the app's some 20 s later), and an outgoing connection of any
    process could take a port of the ephemeral range meanwhile; none takes one below it.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    candidates = range(20000, max(20000, low))
    for port in random.sample(candidates, k=min(200, len(candidates))):
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("", port))  # every address: the app listens on all of them
            ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError(f"found no {count} free ports from 20000 to {low}")


def substitute(text: str, old: str, new: str) -> str:
    """``text`` with every ``old`` (a whole word) replaced; the README must still say ``old``."""
    changed, count = re.subn(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, text)
    assert count, f"the walk-through no longer says {old!r}; update this test with it"
    return changed


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s:\n{log()}")
        time.sleep(0.2)


def serves(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stop(pids: list[int], timeout: float = 15.0) -> None:
    """SIGTERM the processes, then SIGKILL what is left after ``timeout``."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def kill_apps(state_dir: Path) -> None:
    """SIGKILL the process groups of the apps the agent recorded (a test that failed midway)."""
    for state_file in state_dir.glob("**/state.json"):
        with contextlib.suppress(OSError, ValueError):
            for instance in read_state(state_file.parent)["instances"]:
                pid, start_time = instance["pid"], instance["start_time"]
                if pid is None or start_time is None:
                    continue
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[19]) == start_time:  # field 22
                        os.killpg(pid, signal.SIGKILL)


def node_brokers(work: Path) -> list[int]:
    """The node brokers running on ``work``'s agent state (their command line names its config)."""
    config = str(work / "baetyl-edge" / "nodebroker" / "config.json")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if config in (proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


@contextlib.contextmanager
def cloud(
    work: Path, env: dict[str, str], ports: dict[str, int], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``baetyl up`` in ``work`` on the given ports, started from the shell's environment."""
    settings = [
        "--set", "broker.host=127.0.0.1", "--set", f"broker.port={ports['mqtts']}",
        "--set", f"api.port={ports['api']}", "--set", "api.activation_host=127.0.0.1",
        "--set", f"api.activation_port={ports['activation']}",
    ]  # fmt: skip
    with log.open("wb") as out:
        up = subprocess.Popen([BAETYL, *settings, "up"], cwd=work, env=env, stdout=out, stderr=out)
    try:
        wait_for(
            "baetyl up did not come up",
            lambda: "Press Ctrl-C" in log.read_text() or up.poll() is not None,
            60,
            log.read_text,
        )
        assert up.poll() is None, log.read_text()
        yield up
    finally:
        if up.poll() is None:
            up.kill()
        up.wait(timeout=15)


def test_the_readme_walkthrough_works_pasted_into_one_shell(tmp_path: Path) -> None:
    """Every promise of the README's walk-through, run verbatim but for its port numbers."""
    for tool in ("mosquitto_sub", "mosquitto_pub"):
        require_tool(tool)
    for tool in ("curl", "git"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed; install it with 'apt-get install {tool}'.")
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    names = ("mqtts", "api", "activation", "app", "nodebroker")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {name: value for name, value in os.environ.items() if not name.startswith("BAETYL_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),  # no client configuration of the machine's user
        BAETYL_API_URL=f"http://127.0.0.1:{ports['api']}",
    )
    env.pop("XDG_CONFIG_HOME", None)

    blocks = walkthrough_blocks()
    script = "\n".join(f'echo "@@block {n}"; echo "@@block {n}" >&2\n{block}'
                       for n, block in enumerate(blocks, 1))  # fmt: skip
    script = substitute(script, "8883", str(ports["mqtts"]))
    script = substitute(script, "9004", str(ports["api"]))
    script = substitute(script, "8080", str(ports["app"]))
    script = substitute(script, "50010", str(ports["nodebroker"]))
    # The agent's function proxy (50080) and node broker (50010) unless told otherwise: the
    # README runs the agent with its defaults.
    agent = f"baetyl edge run --functions-port 0 --node-broker-port {ports['nodebroker']}"
    script = substitute(script, "baetyl edge run", agent)
    script = f"""trap 'echo "{ERR} $? $BASH_COMMAND" >&2' ERR
{script}
echo "@@after"; echo "@@after" >&2
# The commands once found broken in a shell with BAETYL_API_URL/TOKEN exported.
baetyl tokens list
baetyl certs list
baetyl certs issue operator --name me2 --out-dir op
baetyl config show > /dev/null
timeout 30 baetyl --set broker.port=0 --set api.port=0 --set api.activation_port=0 up
baetyl app delete web
baetyl route delete telemetry-up
baetyl device delete thermo-1
echo "@@jobs $(jobs -p | tr '\\n' ' ')"
"""
    (tmp_path / "walkthrough.sh").write_text(script)
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"

    def output() -> str:
        return f"--- stdout\n{out_file.read_text()}\n--- stderr\n{err_file.read_text()}"

    shell: subprocess.Popen[bytes] | None = None
    jobs: list[int] = []
    try:
        with cloud(work, env, ports, tmp_path / "up.txt") as up:
            with out_file.open("wb") as out, err_file.open("wb") as err:
                shell = subprocess.Popen(
                    ["bash", str(tmp_path / "walkthrough.sh")], cwd=work, env=env,
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            try:
                shell.wait(timeout=SCRIPT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the walk-through did not finish:\n{output()}") from None
            stdout, stderr = out_file.read_text(), err_file.read_text()
            found = re.search(r"^@@jobs (.*)$", stdout, re.MULTILINE)
            assert found, output()
            jobs = [int(pid) for pid in found[1].split()]
            assert len(jobs) == 2, output()  # mosquitto_sub and the agent, still running
            check_walkthrough(stdout, stderr, ports, output)

            # 'baetyl app delete web' stopped the app.
            wait_for("the app still serves", lambda: not serves(ports["app"]), 20, output)
            # Deleting the route and the device stopped the node broker, the agent's system app.
            wait_for(
                "the node broker still runs",
                lambda: not serves(ports["nodebroker"]) and not node_brokers(work),
                20,
                output,
            )
            # A cloud that stops cleanly: the agent says so in words, and keeps trying.
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=30) == 0, (tmp_path / "up.txt").read_text()
            wait_for(
                "the agent did not notice the cloud stopping",
                lambda: "the connection to the cloud closed" in err_file.read_text(),
                20,
                output,
            )
            assert "Unspecified error" not in err_file.read_text()
        stop(jobs)  # kill %1 %2: the watcher and the agent
        assert not [pid for pid in jobs if psutil.pid_exists(pid)], output()
    finally:
        if shell is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)  # whatever the shell left behind
            shell.wait(timeout=15)
        stop(jobs, timeout=1)
        kill_apps(work / "baetyl-edge")  # the app and the node broker, if the agent left them
        stop(node_brokers(work), timeout=1)

    written = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    ignored = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(written), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ignored.returncode in (0, 1), ignored.stderr
    committed = sorted(set(written) - set(ignored.stdout.split()))
    assert not committed, f"'git add .' would commit these walk-through files: {committed}"


def check_walkthrough(
    stdout: str, stderr: str, ports: dict[str, int], output: Callable[[], str]
) -> None:
    """The README's promises, block by block, and no failure but the one it announces."""
    walk, after = stdout.split("@@after\n", 1)
    walk_err, after_err = stderr.split("@@after\n", 1)
    # Every command succeeded but step 6's, which the README says is refused.
    failures = [line for line in walk_err.splitlines() if line.startswith(ERR)]
    assert len(failures) == 1, output()
    assert "-i default.node2" in failures[0], output()
    assert "not authorised" in walk_err, output()

    # Block 1: the certificates, and what the operator's mosquitto_sub saw.
    assert re.search(r"issued node certificate \w+ for CN=default\.node1", walk), output()
    accepted = re.search(r"^\$baetyl/node/default\.node1/report/accepted (\{.*\})$", stdout,
                         re.MULTILINE)  # fmt: skip
    assert accepted, output()
    assert '"clientToken":"t1"' in accepted[1].replace(" ", ""), output()
    assert re.search(r"^\$baetyl/node/default\.node1/report/rejected \{.*\}$", stdout,
                     re.MULTILINE), output()  # fmt: skip
    assert re.search(r"^\w+\s+node\s+CN=default\.node1 .*revoked$", after, re.MULTILINE), output()

    # Block 2: the token, the node, its install command, the config and the app.
    for line in ("node/gw-1 created", "config/web-conf created", "app/web created"):
        assert line in walk, output()
    assert f"baetyl edge activate --url https://localhost:{ports['activation']} " in walk
    assert re.search(r"^\s*- name: web\n\s*version: '1'", walk, re.MULTILINE), output()

    # Block 3: activated, online, the app serving the config's page, the node's stats.
    assert re.search(r"^gw-1\s+yes\s+web\s", walk, re.MULTILINE), output()
    assert "<h1>hello from pybaetyl</h1>" in walk, output()
    assert '"cpu' in walk.rsplit("<h1>hello from pybaetyl</h1>", 1)[1], output()

    # Block 4: the device and the route; the device's message, through the node broker and the
    # route, at the operator's mosquitto_sub on the node's uplink; the node shows the route.
    for line in ("device/thermo-1 created", "route/telemetry-up created"):
        assert line in walk, output()
    devices = walk.split("@@block 4\n", 1)[1]
    uplink = '$baetyl/node/default.gw-1/up/telemetry/thermo-1 {"temp": 21.5}'
    assert uplink in devices.splitlines(), output()
    assert re.search(r"^ROUTE\s+FORWARDED\s+QUEUED", devices, re.MULTILINE), output()
    assert re.search(r"^telemetry-up\s+\d+\s+\d+\s+0\s+0\s+0\s+<none>$", devices,
                     re.MULTILINE), output()  # fmt: skip

    # After: the cloud's commands with both variables exported, then the busy data directory.
    assert "Unknown config key" not in stderr, output()
    assert re.search(r"^ID\s+NAME\s+CREATED", after, re.MULTILINE), output()
    failures = [line for line in after_err.splitlines() if line.startswith(ERR)]
    assert len(failures) == 1, output()
    assert failures[0].endswith(" up"), output()  # the second 'baetyl up', refused
    assert "already serves from the data directory" in after_err, output()
    assert "app/web deleted" in after, output()
    assert "route/telemetry-up deleted" in after, output()
    assert "device/thermo-1 deleted" in after, output()

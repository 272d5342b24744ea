"""What every test is held to: it ends every process it starts.

The native engine's apps outlive the agent by design (a session of their own, re-parented to
PID 1 once the agent exits), so a test that stops an agent without deleting its apps leaves them
running after the suite, one more set per run. Two guards catch that, each naming the processes:

* after each test, a process whose working directory, command line or environment names a path
  under the test's ``tmp_path`` fails the test (an error at its teardown). A node's apps run in
  their app directory under the agent's state directory, which the tests keep in ``tmp_path``;
* at the end of the run, a process still descending from pytest, or naming a path under the
  run's base temporary directory (module and session fixtures keep theirs there), fails the run.

A process is ours only by those paths, unique to this run, never by program name: other runs of
the same programs may share the machine. What a guard finds is killed after it is reported, so
one leak does not pile up over runs or break the next test.

It also holds the fixtures more than one package's tests use (their helpers live in
tests/support/): ``mariadb``, ``database`` (SQLite and MariaDB; a package's conftest may narrow
it to one backend), ``cloud`` (the whole cloud in the test's loop), ``api``, ``api_for``,
``permissive_umask``, a real agent (``agent_dir``: node gw-1 activated from its install
command; ``start_agent``: ``baetyl edge run`` on it, or on another activated state directory,
every agent and the apps they left stopped after the test) and ``run`` (a ``baetyl`` command in
a thread, captured). A package's conftest may narrow ``database`` to one backend (the edge and
the data plane use SQLite).

And it draws the fast lane: the suites that take minutes (faults, scale-out, deploy, the data
plane's, every ``*_e2e.py``, the walk-through) and the slowest other files (``_SLOW_FILES``)
are marked ``slow`` here, by path, so ``bash scripts/test.sh --fast`` (``-m "not slow"``) runs
the rest for the edit-test loop while CI runs everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from management.bootstrap import ensure_pki
from management.cloud import Cloud
from tests.support.agent import activate_node, stop_left_apps
from tests.support.cli import Cli, capture
from tests.support.cloud import Api, RunningCloud, cloud_settings
from tests.support.db import Database, fresh_mysql_database, require_mariadb, sqlite_database
from tests.support.up import BAETYL

pytest_plugins = ("pytester",)  # tests/test_process_guard.py runs the guards in a pytest of its own

_SETTLE = 2.0  # seconds a process stopped at teardown may take to be gone

# What the fast lane leaves out, by path under tests/: whole directories, every ``*_e2e.py``, and
# the files that take the longest otherwise (measured with --durations): a real agent or
# `baetyl up` as a subprocess, fuzzing and property tests of hundreds of examples, pytest in pytest.
_SLOW_DIRECTORIES = ("faults", "scaleout", "deploy", "dataplane")
_SLOW_FILES = (
    "test_walkthrough.py",
    "test_process_guard.py",
    "broker/test_router_index.py",
    "dataplane/test_store_and_forward.py",
    "edge/test_agent_delivery.py",
    "edge/test_agent_imports.py",
    "edge/test_agent_renewal.py",
    "management/test_api_schemathesis.py",
    "management/test_cli.py",
)


def _slow(path: Path) -> bool:
    """Whether the test file at ``path`` belongs to a slow suite (see the module's docstring)."""
    if not path.is_relative_to(Path(__file__).parent):
        return False  # a pytest run inside a test (pytester) has tests of its own
    parts = path.relative_to(Path(__file__).parent).parts
    return (
        parts[0] in _SLOW_DIRECTORIES
        or "/".join(parts) in _SLOW_FILES
        or path.stem.endswith("_e2e")
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of a slow suite ``slow`` (by path: a new file there is slow too)."""
    for item in items:
        if _slow(item.path):
            item.add_marker(pytest.mark.slow)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _names(pid: int, root: str) -> bool:
    """Whether process ``pid`` works in, or names in its command line or environment, ``root``."""
    prefix = root.rstrip("/") + "/"
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if cwd == prefix.rstrip("/") or cwd.startswith(prefix):
            return True
    marker = prefix.encode()
    for part in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
    return False


def _live() -> dict[int, int]:
    """Every live (not zombie) process: pid -> parent pid."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                found[int(entry.name)] = stat[1]
    return found


def _descendants(ancestor: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [ancestor]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def leaked(root: Path, *, descendants: bool = False) -> dict[int, str]:
    """The live processes naming a path under ``root`` (and, with ``descendants``, every live
    process descending from this one), other than this process: pid -> command line."""
    me = os.getpid()
    parents = _live()
    pids = {pid for pid in parents if pid != me and _names(pid, str(root))}
    if descendants:
        pids |= _descendants(me, parents)
    return {pid: _command(pid) for pid in sorted(pids)}


def settled_leaks(root: Path, *, descendants: bool = False) -> dict[int, str]:
    """``leaked``, once processes stopping at teardown had ``_SETTLE`` seconds to be gone."""
    deadline = time.monotonic() + _SETTLE
    while (found := leaked(root, descendants=descendants)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _kill(found: dict[int, str]) -> None:
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _report(found: dict[int, str], where: str) -> str:
    lines = "\n".join(f"  pid {pid}: {command}" for pid, command in found.items())
    return (
        f"{where} left {len(found)} process(es) running (killed now); end every process the "
        f"test starts, e.g. stop an agent's apps (they outlive the agent by design):\n{lines}"
    )


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set up first, so torn down last: after every other fixture of the run."""
    base = tmp_path_factory.getbasetemp()
    yield
    found = settled_leaks(base, descendants=True)
    _kill(found)
    assert not found, _report(found, f"The test run (base temporary directory {base})")


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Torn down after the test's other fixtures (autouse, so set up before them)."""
    yield
    tmp_path = (getattr(request.node, "funcargs", None) or {}).get("tmp_path")
    if not isinstance(tmp_path, Path):
        return  # the test had no tmp_path: the end of the run checks it
    found = settled_leaks(tmp_path)
    _kill(found)
    assert not found, _report(found, request.node.nodeid)


# -- shared fixtures -----------------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Run the test with umask 000, the worst case for file permissions."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="session")
def mariadb() -> None:
    """MariaDB answers at 127.0.0.1:3306; otherwise skip (fail under CI)."""
    require_mariadb()


@pytest.fixture(params=["sqlite", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database on each backend, dropped afterwards."""
    if request.param == "sqlite":
        yield sqlite_database(tmp_path)
        return
    request.getfixturevalue("mariadb")
    with fresh_mysql_database("pybaetyl_test") as database:
        yield database


@pytest.fixture
async def cloud(database: Database, tmp_path: Path) -> AsyncIterator[RunningCloud]:
    """The whole cloud on a fresh ``database``, in this test's loop."""
    settings = cloud_settings(tmp_path / "data", database.url)
    ca, files = ensure_pki(settings)
    async with Cloud(settings, ca, files) as running:
        yield RunningCloud(running, settings, ca, database)


@pytest.fixture
async def api_for(cloud: RunningCloud) -> AsyncIterator[Callable[[str], Awaitable[Api]]]:
    """Make an API client for a namespace (its token created on the fly)."""
    async with aiohttp.ClientSession() as session:

        async def make(namespace: str) -> Api:
            return Api(session, cloud.api_url, namespace, await cloud.token(namespace))

        yield make


@pytest.fixture
async def api(api_for: Callable[[str], Awaitable[Api]]) -> Api:
    """An API client for namespace ``default``."""
    return await api_for("default")


@pytest.fixture
async def agent_dir(cloud: RunningCloud, api: Api, tmp_path: Path) -> Path:
    """A node gw-1 (label site=x) activated from its install command into a fresh state
    directory."""
    state = tmp_path / "edge"
    await activate_node(api, "gw-1", {"site": "x"}, state)
    return state


StartAgent = Callable[..., subprocess.Popen[str]]


@pytest.fixture
async def start_agent(agent_dir: Path) -> AsyncIterator[StartAgent]:
    """Start `baetyl edge run` on the activated node (more options after its own; another
    activated node with ``state_dir=``); the agents and every app they started (a node
    broker among them) are stopped after."""
    running: list[subprocess.Popen[str]] = []
    states = [agent_dir]

    def start(
        *options: str, env: dict[str, str] | None = None, state_dir: Path | None = None
    ) -> subprocess.Popen[str]:
        state = agent_dir if state_dir is None else state_dir
        if state not in states:
            states.append(state)
        proc = subprocess.Popen(
            [BAETYL, "--log-level", "debug", "edge", "run", "--state-dir", str(state),
             "--report-interval", "1", "--functions-port", "0", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
        running.append(proc)
        return proc

    yield start
    for proc in running:  # waited for in a thread: the cloud, in this loop, must keep answering
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.communicate, timeout=10)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.communicate)
    for state in states:
        await stop_left_apps(state)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``baetyl ARGV...`` in a thread and capture what it printed."""
    return capture(capsys)

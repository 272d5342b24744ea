"""The native engine runs apps as real processes: files, environment, restarts, logs, adoption."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edge.engines import AppSpec, AppStatus, InstanceState
from edge.engines.native import NativeEngine
from tests.support.polling import until
from tests.support.processes import alive

T = TypeVar("T")

# Fast supervision for tests: poll every 50 ms, restart after 100 ms (doubling up to 1 s).
FAST: dict[str, Any] = {"stop_timeout": 2.0, "backoff": (0.1, 1.0), "poll_interval": 0.05}

# A program that writes what the test wants to see to $OUT, then stays up.
SLEEP = "import time; time.sleep(60)"
COUNT_STARTS = "import os; open(os.environ['OUT'], 'a').write(f'{os.getpid()}\\n'); " + SLEEP


def native_app(
    code: str,
    *,
    name: str = "app",
    version: str = "1",
    out: Path | None = None,
    command: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    service: Mapping[str, Any] | None = None,
    configs: dict[str, dict[str, str]] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
) -> AppSpec:
    """A one-service native app running ``python -c code`` with $OUT set to ``out``."""
    env = [{"name": "OUT", "value": str(out)}] if out is not None else []
    main = {
        "name": "main",
        "command": list(command) if command is not None else [sys.executable, "-c", code],
        "env": env,
        **(service or {}),
    }
    spec = {"type": "native", "services": [main], **(extra or {})}
    return AppSpec(name, version, spec, configs or {}, secrets or {})


def only(engine: NativeEngine) -> AppStatus:
    """The status of the one app the engine runs."""
    (status,) = engine.status()
    return status


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
async def root(tmp_path: Path) -> AsyncIterator[Path]:
    """The engine's root; afterwards whatever a test left running there is adopted and stopped."""
    root = tmp_path / "node"
    yield root
    async with NativeEngine(root, **FAST) as cleaner:
        await cleaner.stop_all()


@pytest.fixture
async def engine(root: Path) -> AsyncIterator[NativeEngine]:
    async with NativeEngine(root, **FAST) as engine:
        yield engine


async def test_app_runs_and_applying_again_changes_nothing(
    engine: NativeEngine, root: Path
) -> None:
    """Each replica is a live process, reported Running; the same apply keeps the same pids."""
    app = native_app(SLEEP, extra={"replicas": 2})
    await engine.apply([app])
    status = only(engine)
    assert (status.name, status.version, status.state) == ("app", "1", InstanceState.RUNNING)
    assert [i.name for i in status.instances] == ["main-0", "main-1"]
    pids = [i.pid for i in status.instances]
    assert all(pid is not None and alive(pid) for pid in pids)
    assert all(i.started_at is not None and i.started_at <= time.time() for i in status.instances)
    assert (root / "apps" / "app" / "1" / "state.json").is_file()
    await engine.apply([app])
    await asyncio.sleep(0.2)
    assert [i.pid for i in only(engine).instances] == pids
    assert [i.restarts for i in only(engine).instances] == [0, 0]


async def test_volumes_are_files_the_app_reads(
    engine: NativeEngine, root: Path, tmp_path: Path
) -> None:
    """Config files are 0644, secret files 0600 in a 0700 directory, hostPath the path itself."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "data.txt").write_text("from the host")
    out = tmp_path / "out.json"
    code = (
        "import json, os, pathlib, time\n"
        "read = lambda var, key: pathlib.Path(os.environ[var], key).read_text()\n"
        "pathlib.Path(os.environ['OUT']).write_text(json.dumps({\n"
        "    'config': read('BAETYL_VOLUME_APP_CONF', 'greeting.txt'),\n"
        "    'secret': read('BAETYL_MOUNT_CREDS', 'token'),\n"
        "    'host': read('BAETYL_VOLUME_HOST', 'data.txt'),\n"
        "}))\n"
        "time.sleep(60)\n"
    )
    volumes = [
        {"name": "app-conf", "config": {"name": "greetings", "version": "7"}},
        {"name": "creds", "secret": {"name": "api-token", "version": "3"}},
        {"name": "host", "hostPath": {"path": str(host)}},
    ]
    mounts = [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}]
    app = native_app(
        code,
        out=out,
        extra={"volumes": volumes},
        service={"volumeMounts": mounts},
        configs={"greetings": {"greeting.txt": "hello"}},
        secrets={"api-token": {"token": "s3cr3t"}},
    )
    await engine.apply([app])
    await until(out.exists)
    seen = json.loads(await until(lambda: out.read_text() or None))
    assert seen == {"config": "hello", "secret": "s3cr3t", "host": "from the host"}
    volumes_dir = root / "apps" / "app" / "1" / "volumes"
    assert stat.S_IMODE((volumes_dir / "app-conf" / "greeting.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((volumes_dir / "creds").stat().st_mode) == 0o700
    assert stat.S_IMODE((volumes_dir / "creds" / "token").stat().st_mode) == 0o600
    await engine.apply([])
    assert not volumes_dir.exists()
    assert (host / "data.txt").read_text() == "from the host"  # removing never follows hostPath


async def test_environment_and_working_directory(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app gets PATH/HOME/LANG, its env, the BAETYL_ variables and its cwd; nothing else."""
    monkeypatch.setenv("AGENT_ONLY_SECRET", "must-not-leak")
    out = tmp_path / "env.json"
    code = (
        "import json, os, pathlib, time\n"
        "env = dict(os.environ, CWD=os.getcwd())\n"
        "pathlib.Path(os.environ['OUT']).write_text(json.dumps(env))\n"
        "time.sleep(60)\n"
    )
    app = native_app(
        code,
        out=out,
        extra={"volumes": [{"name": "conf", "config": {"name": "c"}}]},
        service={
            "env": [{"name": "OUT", "value": str(out)}, {"name": "LOG_LEVEL", "value": "debug"}],
            "volumeMounts": [{"name": "conf", "mountPath": "/etc/conf"}],
        },
        configs={"c": {"a.txt": "a"}},
    )
    async with NativeEngine(root, **FAST) as engine:
        await engine.apply([app])
        env = json.loads(await until(lambda: (out.exists() and out.read_text()) or None))
    app_dir = root / "apps" / "app" / "1"
    assert env["LOG_LEVEL"] == "debug"
    assert env["PATH"] == os.environ["PATH"]
    assert (env["BAETYL_APP_NAME"], env["BAETYL_APP_VERSION"]) == ("app", "1")
    assert (env["BAETYL_SERVICE_NAME"], env["BAETYL_INSTANCE_NAME"]) == ("main", "main-0")
    assert env["BAETYL_VOLUME_CONF"] == env["BAETYL_MOUNT_CONF"] == str(app_dir / "volumes/conf")
    assert "AGENT_ONLY_SECRET" not in env
    assert env["CWD"] == str(app_dir)


async def test_workdir_is_the_working_directory(engine: NativeEngine, tmp_path: Path) -> None:
    """A service's workdir is where its process runs."""
    out = tmp_path / "cwd.txt"
    code = "import os, pathlib, time; pathlib.Path(os.environ['OUT']).write_text(os.getcwd()); "
    app = native_app(code + SLEEP, out=out, service={"workdir": str(tmp_path)})
    await engine.apply([app])
    assert await until(lambda: out.exists() and out.read_text()) == str(tmp_path)


async def test_new_version_replaces_the_old(
    engine: NativeEngine, root: Path, tmp_path: Path
) -> None:
    """A new version starts with its new config; the old process is gone, its directory too."""
    out = tmp_path / "greeting.txt"
    code = (
        "import os, pathlib, time\n"
        "text = pathlib.Path(os.environ['BAETYL_VOLUME_CONF'], 'greeting').read_text()\n"
        "pathlib.Path(os.environ['OUT']).write_text(text)\n"
        "time.sleep(60)\n"
    )
    volumes = {"volumes": [{"name": "conf", "config": {"name": "greetings"}}]}

    def version(v: str, greeting: str) -> AppSpec:
        configs = {"greetings": {"greeting": greeting}}
        return native_app(code, version=v, out=out, extra=volumes, configs=configs)

    await engine.apply([version("1", "one")])
    assert await until(lambda: out.exists() and out.read_text() == "one")
    old_pid = only(engine).instances[0].pid
    assert old_pid is not None
    await engine.apply([version("2", "two")])
    assert await until(lambda: out.read_text() == "two")
    status = only(engine)
    assert (status.version, status.state) == ("2", InstanceState.RUNNING)
    assert status.instances[0].pid != old_pid
    assert not alive(old_pid)
    assert not (root / "apps" / "app" / "1").exists()
    assert (root / "apps" / "app" / "2").is_dir()


async def test_removed_app_is_stopped_and_its_files_removed(
    engine: NativeEngine, root: Path
) -> None:
    """An app no longer listed is stopped and its directory deleted."""
    await engine.apply([native_app(SLEEP)])
    pid = only(engine).instances[0].pid
    assert pid is not None
    await engine.apply([])
    assert engine.status() == []
    assert not alive(pid)
    assert not (root / "apps" / "app").exists()


async def test_stop_kills_what_ignores_sigterm(root: Path, tmp_path: Path) -> None:
    """A process that ignores SIGTERM is killed once the stop timeout has passed."""
    ready = tmp_path / "ready"
    code = (
        "import os, pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "pathlib.Path(os.environ['OUT']).touch()\n"
        "time.sleep(60)\n"
    )
    async with NativeEngine(root, **{**FAST, "stop_timeout": 0.3}) as engine:
        await engine.apply([native_app(code, out=ready)])
        await until(ready.exists)
        pid = only(engine).instances[0].pid
        assert pid is not None
        began = time.monotonic()
        await engine.stop_all()
        assert time.monotonic() - began >= 0.3
        assert not alive(pid)


async def test_crash_is_restarted_with_its_cause(engine: NativeEngine) -> None:
    """A process that exits or is killed is started again; restarts counts it, cause says why."""
    crash = {"name": "crash", "command": [sys.executable, "-c", "raise SystemExit(3)"]}
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    killed = {"name": "killed", "command": [sys.executable, "-c", suicide]}
    app = AppSpec("app", "1", {"type": "native", "services": [crash, killed]})
    await engine.apply([app])

    def restarted_twice() -> bool:
        return all(i.restarts >= 2 for i in only(engine).instances)

    await until(restarted_twice)
    causes = {i.name: i.cause for i in only(engine).instances}
    assert causes == {"crash-0": "exited with code 3", "killed-0": "killed by signal SIGKILL"}


async def test_backoff_doubles(root: Path, tmp_path: Path) -> None:
    """Each consecutive failure doubles the wait before the next start."""
    starts = tmp_path / "starts"
    code = "import os, time; open(os.environ['OUT'], 'a').write(f'{time.time()}\\n'); exit(1)"
    async with NativeEngine(root, **{**FAST, "backoff": (0.3, 10.0)}) as engine:
        await engine.apply([native_app(code, out=starts)])
        await until(lambda: len(read_lines(starts)) >= 4)
        status = only(engine)
    times = [float(line) for line in read_lines(starts)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.3
    assert gaps[0] < gaps[1] < gaps[2]  # nominally 0.3, 0.6 and 1.2 s, plus start-up time
    assert gaps[2] > 2 * gaps[0]
    assert status.state in (InstanceState.FAILED, InstanceState.RUNNING)
    assert status.instances[0].restarts >= 3


async def test_job_succeeds_once(engine: NativeEngine, tmp_path: Path) -> None:
    """A job that exits with code 0 has Succeeded and is not started again."""
    runs = tmp_path / "runs"
    code = "import os; open(os.environ['OUT'], 'a').write('ran\\n')"
    await engine.apply([native_app(code, out=runs, extra={"workload": "job"})])
    await until(lambda: only(engine).state is InstanceState.SUCCEEDED)
    await asyncio.sleep(0.4)  # several polls and back-offs
    instance = only(engine).instances[0]
    assert (instance.state, instance.restarts, instance.pid) == (InstanceState.SUCCEEDED, 0, None)
    assert read_lines(runs) == ["ran"]


async def test_missing_command_fails_and_is_retried(engine: NativeEngine) -> None:
    """A program that does not exist is Failed with the reason, and tried again later."""
    await engine.apply([native_app("", command=["/nonexistent/program", "--flag"])])
    status = only(engine)
    assert status.state is InstanceState.FAILED
    assert status.cause == "cannot run /nonexistent/program: no such file or directory"
    await until(lambda: only(engine).instances[0].restarts >= 2)
    assert only(engine).state is InstanceState.FAILED


async def test_app_without_its_config_fails_until_it_arrives(
    engine: NativeEngine, tmp_path: Path
) -> None:
    """An app whose config data is missing is Failed; applying it with the data starts it."""
    out = tmp_path / "out"
    extra = {"volumes": [{"name": "conf", "config": {"name": "c"}}]}
    await engine.apply([native_app(COUNT_STARTS, out=out, extra=extra)])
    status = only(engine)
    assert status.state is InstanceState.FAILED
    assert status.cause is not None
    assert "'c'" in status.cause
    await engine.apply([native_app(COUNT_STARTS, out=out, extra=extra, configs={"c": {}})])
    assert only(engine).state is InstanceState.RUNNING
    await until(lambda: read_lines(out))


async def test_other_app_types_are_not_run(engine: NativeEngine, root: Path) -> None:
    """Container apps, and function apps without handlers, are reported Failed; nothing runs."""
    web = {"name": "w", "image": "nginx:1.27"}
    container = AppSpec("web", "1", {"type": "container", "services": [web]})
    function = AppSpec("fn", "1", {"type": "function", "services": [{"name": "f"}]})
    await engine.apply([container, function])
    causes = {s.name: (s.state, s.cause) for s in engine.status()}
    assert causes == {
        "fn": (
            InstanceState.FAILED,
            "The function service 'f' needs handlers, e.g. "
            '[{"name": "filter", "handler": "filters.on_message"}].',
        ),
        "web": (InstanceState.FAILED, "container apps need the kube engine"),
    }
    assert not (root / "apps").exists() or list((root / "apps").iterdir()) == []


async def test_logs_hold_stdout_and_stderr(engine: NativeEngine, root: Path) -> None:
    """What the app prints to stdout and stderr lands in logs/<service>.log."""
    code = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)\n"
    await engine.apply([native_app(code + SLEEP)])
    log = root / "apps" / "app" / "1" / "logs" / "main.log"
    await until(lambda: log.exists() and "to stderr" in log.read_text())
    assert "to stdout" in log.read_text()


async def test_logs_are_rotated(root: Path, tmp_path: Path) -> None:
    """A log past its size is copied to .1 (older ones moved up, N kept) and truncated."""
    done = tmp_path / "done"
    code = (
        "import os, pathlib, time\n"
        "for i in range(60):\n"
        "    print(f'{i:04} ' + 'x' * 295, flush=True)\n"
        "    time.sleep(0.01)\n"
        "pathlib.Path(os.environ['OUT']).touch()\n"
    )
    settings = {**FAST, "log_max_bytes": 2000, "log_backups": 2}
    async with NativeEngine(root, **settings) as engine:
        await engine.apply([native_app(code + SLEEP, out=done)])
        log = root / "apps" / "app" / "1" / "logs" / "main.log"
        await until(done.exists)
        await until(lambda: log.stat().st_size <= 2000)
        backup = log.with_name("main.log.2")
        assert log.with_name("main.log.1").stat().st_size > 0
        assert backup.stat().st_size > 0
        assert not log.with_name("main.log.3").exists()
        lines = read_lines(log.with_name("main.log.1")) + read_lines(log)
        assert lines[-1].startswith("0059 ")


async def test_new_engine_adopts_running_processes(root: Path, tmp_path: Path) -> None:
    """Processes outlive the engine; the next one adopts them (no duplicate) and can stop them."""
    starts = tmp_path / "starts"
    async with NativeEngine(root, **FAST) as first:
        await first.apply([native_app(COUNT_STARTS, out=starts)])
        pid = only(first).instances[0].pid
        assert pid is not None
        await until(lambda: read_lines(starts))
    assert alive(pid)
    async with NativeEngine(root, **FAST) as second:
        instance = only(second).instances[0]
        assert (instance.state, instance.pid, instance.restarts) == (InstanceState.RUNNING, pid, 0)
        await second.apply([native_app(COUNT_STARTS, out=starts)])
        await asyncio.sleep(0.3)
        assert only(second).instances[0].pid == pid
        assert read_lines(starts) == [str(pid)]
        await second.stop_all()
        assert not alive(pid)


async def test_dead_process_is_restarted_on_adoption(root: Path, tmp_path: Path) -> None:
    """A recorded process that died while no engine ran is started again, once."""
    starts = tmp_path / "starts"
    async with NativeEngine(root, **FAST) as first:
        await first.apply([native_app(COUNT_STARTS, out=starts)])
        pid = only(first).instances[0].pid
        assert pid is not None
        await until(lambda: read_lines(starts))
    os.kill(pid, signal.SIGKILL)
    await until(lambda: not alive(pid))
    async with NativeEngine(root, **FAST) as second:
        instance = only(second).instances[0]
        assert instance.state is InstanceState.RUNNING
        assert instance.pid not in (None, pid)
        assert (instance.restarts, instance.cause) == (1, "killed by signal SIGKILL")
        await until(lambda: len(read_lines(starts)) == 2)


async def test_reused_pid_is_not_adopted(root: Path, tmp_path: Path) -> None:
    """A recorded pid now held by another program (other start time) is left alone."""
    starts = tmp_path / "starts"
    async with NativeEngine(root, **FAST) as first:
        await first.apply([native_app(COUNT_STARTS, out=starts)])
    await asyncio.sleep(0.05)  # start times count in 10 ms ticks: the stranger's will differ
    state_file = root / "apps" / "app" / "1" / "state.json"
    state = json.loads(state_file.read_text())
    stranger = await asyncio.create_subprocess_exec(sys.executable, "-c", SLEEP)
    try:
        # The record now names the stranger's pid with another start time: a reused pid.
        recorded = state["instances"][0]
        os.kill(recorded["pid"], signal.SIGKILL)
        await asyncio.to_thread(os.waitpid, recorded["pid"], 0)
        recorded["pid"] = stranger.pid
        state_file.write_text(json.dumps(state))
        async with NativeEngine(root, **FAST) as second:
            instance = only(second).instances[0]
            assert instance.pid not in (None, stranger.pid)
            await second.stop_all()
        assert alive(stranger.pid)
    finally:
        stranger.kill()
        await stranger.wait()


async def test_a_relative_root_gives_apps_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a root relative to the agent's directory, the app (in its own cwd) still finds
    its volume through BAETYL_VOLUME_<NAME>."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "seen.txt"
    code = (
        "import os, pathlib, time\n"
        "path = pathlib.Path(os.environ['BAETYL_VOLUME_CONF'], 'a.txt')\n"
        "pathlib.Path(os.environ['OUT']).write_text(str(path.is_absolute()) + path.read_text())\n"
        "time.sleep(60)\n"
    )
    app = native_app(
        code,
        out=out,
        extra={"volumes": [{"name": "conf", "config": {"name": "conf", "version": "1"}}]},
        configs={"conf": {"a.txt": "hi"}},
    )
    async with NativeEngine(Path("relative-node"), **FAST) as engine:
        try:
            await engine.apply([app])
            assert await until(lambda: read_lines(out)) == ["Truehi"]
        finally:
            await engine.stop_all()

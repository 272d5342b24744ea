"""The native engine: a node's ``type: native`` apps as supervised processes.

Each app version gets a directory (see :mod:`edge.engines.appdir`) holding its volume files, its
logs and ``state.json``; each service runs ``replicas`` processes (``<service>-<replica>``), each
in a session of its own with its output appended to the service's log, so the apps keep running
while the agent is down. The program finds its files through ``BAETYL_VOLUME_<NAME>`` and
``BAETYL_MOUNT_<NAME>`` (see :mod:`edge.engines.plan`); it also gets ``BAETYL_APP_NAME``,
``BAETYL_APP_VERSION``, ``BAETYL_SERVICE_NAME`` and ``BAETYL_INSTANCE_NAME``, on top of the
agent's ``PATH``, ``HOME`` and ``LANG`` and the service's ``env``. It runs in ``workdir``, or in
the app version directory.

A supervisor task polls the processes: one that exits is started again after a back-off that
doubles with each consecutive failure (from ``backoff[0]`` up to ``backoff[1]`` seconds, reset
once a process has run for ``backoff[1]``); a ``job`` that exits with code 0 has Succeeded and
stays so. A program that cannot be started is Failed, and retried with the same back-off.
Container apps (the kube engine's) are reported Failed, never run; an app's registries (image
pull credentials) concern only them, so this engine ignores them (the agent does not even fetch
them for a native or function app).

A function app's services run the function runtime (see :mod:`edge.engines.plan`); each
instance writes the port it listens on to ``run/<instance>.port`` in the app version directory,
and :meth:`NativeEngine.function_endpoint` tells the function proxy where to send a call.

Entering the engine adopts the processes recorded in every ``state.json`` — a pid counts as ours
only if its start time matches too — and restarts the ones that died meanwhile, so an agent
restart never runs a process twice. Leaving stops supervising and leaves the processes running;
:meth:`NativeEngine.stop_all` stops them.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from edge.engines.appdir import (
    STATE_FILE,
    log_file,
    materialise,
    read_state,
    rotate,
    volume_dirs,
    write_state,
)
from edge.engines.base import AppSpec, AppStatus, InstanceState
from edge.engines.plan import Plan, SpecError, Workload, check_file_name, env_suffix
from edge.engines.processes import Exit, poll, spawn, stop, sweep_group
from edge.engines.supervised import (
    Instance,
    Launch,
    SupervisedApp,
    listening_port,
    restore,
    startup_error,
)
from edge.functions import PORT_FILE_ENV

__all__ = ["NativeEngine"]

log = logging.getLogger(__name__)

_AGENT_ENV: Final = ("PATH", "HOME", "LANG")
_DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
_UNSUPPORTED: Final = {"container": "container apps need the kube engine"}
_LOCALHOST: Final = "127.0.0.1"


class NativeEngine:
    """Runs native apps as processes under ``root``; see the module docstring.

    ``stop_timeout`` is how long a stopping process gets between SIGTERM and SIGKILL; ``backoff``
    the first and the longest delay before a restart; logs are rotated past ``log_max_bytes``,
    keeping ``log_backups`` older files; ``poll_interval`` is how often the processes are checked.
    """

    def __init__(
        self,
        root: Path,
        *,
        stop_timeout: float = 10.0,
        backoff: tuple[float, float] = (1.0, 60.0),
        log_max_bytes: int = 10 * 1024 * 1024,
        log_backups: int = 3,
        poll_interval: float = 0.5,
    ) -> None:
        if stop_timeout < 0:
            raise ValueError(f"stop_timeout must be 0 or more seconds, not {stop_timeout}.")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(
                f"backoff must be (first, longest) delays with 0 < first <= longest, not {backoff}."
            )
        if log_max_bytes <= 0 or log_backups < 0:
            raise ValueError("log_max_bytes must be positive and log_backups 0 or more.")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be a positive duration, not {poll_interval}.")
        # Absolute: apps run in their own directories and get these paths in their environment.
        self._apps_root = root.resolve() / "apps"
        self._stop_timeout = stop_timeout
        self._backoff = backoff
        self._log_max_bytes = log_max_bytes
        self._log_backups = log_backups
        self._poll_interval = poll_interval
        self._base_env = {k: os.environ[k] for k in _AGENT_ENV if k in os.environ}
        self._base_env.setdefault("PATH", _DEFAULT_PATH)
        self._apps: dict[tuple[str, str], SupervisedApp] = {}
        self._apply_lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._supervisor is not None:
            raise RuntimeError("This NativeEngine is already running; enter it only once.")
        self._adopt()
        self._tick()  # restart what died while no agent was watching, before anyone looks
        self._supervisor = asyncio.create_task(self._supervise(), name="native-engine-supervisor")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._supervisor = self._supervisor, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    # -- the Engine interface ----------------------------------------------------------------------

    async def apply(self, apps: Sequence[AppSpec]) -> None:
        """Make the running set exactly ``apps``: start new ones, replace changed versions, stop
        the rest. Applying the same set again changes nothing."""
        async with self._apply_lock:
            desired: dict[str, AppSpec] = {}
            for spec in apps:
                if spec.name in desired:
                    log.warning("app %s is listed twice; running the last one", spec.name)
                desired[spec.name] = spec
            for spec in desired.values():
                key = (spec.name, spec.version)
                current = self._apps.get(key)
                if current is not None and not current.retry:
                    continue
                self._apps.pop(key, None)  # a failed attempt, with nothing running
                self._apps[key] = await self._create(spec)
            retired = [
                self._apps.pop(key)
                for key in list(self._apps)
                if key[0] not in desired or desired[key[0]].version != key[1]
            ]
            await self._retire(retired)
            known = {app.dir for app in self._apps.values() if app.dir is not None}
            await asyncio.to_thread(_remove_strays, self._apps_root, known)

    def status(self) -> list[AppStatus]:
        """Every app version the engine knows, by name."""
        return [self._apps[key].status() for key in sorted(self._apps)]

    def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
        """Where a runtime serving ``function`` of ``app`` listens: (host, port), or None if none
        listens now. Raises ``LookupError`` if this node runs no such app and function."""
        for running in self._apps.values():
            if running.name != app or running.plan is None or running.dir is None:
                continue
            instances = [i for i in running.instances if function in i.service.functions]
            if not instances:
                continue
            for instance in instances:
                if instance.process is None or instance.state is not InstanceState.RUNNING:
                    continue
                port = listening_port(instance)
                if port is not None:
                    return _LOCALHOST, port
            return None
        raise LookupError(f"This node runs no function {function!r} of an app {app!r}.")

    async def stop_all(self) -> None:
        """Stop every app and remove its files (to uninstall, and in tests)."""
        await self.apply([])

    # -- starting and stopping apps ----------------------------------------------------------------

    async def _create(self, spec: AppSpec) -> SupervisedApp:
        """Materialise a new app version and start its processes (or say why it cannot run)."""
        app = SupervisedApp(spec.name, spec.version, copy.deepcopy(spec.spec))
        try:
            plan = Plan.parse(spec.spec)
        except SpecError as exc:
            app.cause = str(exc)
            return app
        if plan.type in _UNSUPPORTED:
            app.cause = _UNSUPPORTED[plan.type]
            return app
        try:
            check_file_name("app name", spec.name)
            check_file_name("app version", spec.version)
            app_dir = self._apps_root / spec.name / spec.version
            await asyncio.to_thread(
                materialise, app_dir, plan, spec.configs, spec.secrets, spec.certificates
            )
        except SpecError as exc:
            app.cause, app.retry = str(exc), True
            return app
        except OSError as exc:
            app.cause, app.retry = f"its files could not be written: {exc}", True
            return app
        app.plan, app.dir = plan, app_dir
        app.instances = self._instances(app.name, app.version, app_dir, plan)
        now = time.monotonic()
        for instance in app.instances:
            self._start(app, instance, now)
        self._save(app)
        log.info("started app %s version %s", app.name, app.version)
        return app

    async def _retire(self, apps: Sequence[SupervisedApp]) -> None:
        """Stop the processes of ``apps`` (no longer supervised) and remove their directories."""
        processes = []
        for app in apps:
            for instance in app.instances:
                if instance.process is not None:
                    processes.append(instance.process)
                    instance.process = None
        if processes:
            await stop(processes, grace=self._stop_timeout)
        for app in apps:
            log.info("stopped app %s version %s", app.name, app.version)
            if app.dir is not None:
                await asyncio.to_thread(shutil.rmtree, app.dir, ignore_errors=True)

    # -- adoption ----------------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Take over the apps recorded under ``root``: watch live processes, queue dead ones."""
        for state_path in sorted(self._apps_root.glob(f"*/*/{STATE_FILE}")):
            app_dir = state_path.parent
            try:
                record = read_state(app_dir)
                plan = Plan.parse(record["spec"])
            except (OSError, ValueError) as exc:
                log.warning("cannot adopt the app in %s: %s", app_dir, exc)
                continue
            if (record["name"], record["version"]) != (app_dir.parent.name, app_dir.name):
                log.warning("cannot adopt the app in %s: its state.json names another", app_dir)
                continue
            app = SupervisedApp(record["name"], record["version"], record["spec"], plan, app_dir)
            app.instances = self._instances(app.name, app.version, app_dir, plan)
            known = {(r["service"], r["replica"]): r for r in record["instances"]}
            for instance in app.instances:
                saved = known.get((instance.service.name, instance.replica))
                if saved is not None:
                    restore(instance, saved)
            self._apps[(app.name, app.version)] = app
            adopted = sum(1 for i in app.instances if i.process is not None)
            log.info("adopted app %s version %s (%d running)", app.name, app.version, adopted)

    # -- supervision -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            try:
                self._tick()
                logs = [
                    log_file(app.dir, service.name)
                    for app in self._apps.values()
                    if app.dir is not None and app.plan is not None
                    for service in app.plan.services
                ]
                await asyncio.to_thread(self._rotate_logs, logs)
            except Exception:
                log.exception("supervising the native apps failed; trying again")
            await asyncio.sleep(self._next_wakeup())

    def _tick(self) -> None:
        """Reap what exited, schedule its restart, and start what is due."""
        now = time.monotonic()
        for app in list(self._apps.values()):
            changed = False
            for instance in app.instances:
                changed |= self._check(app, instance, now)
            if changed:
                self._save(app)

    def _check(self, app: SupervisedApp, instance: Instance, now: float) -> bool:
        """Bring one instance up to date; returns whether its record changed."""
        if instance.process is not None:
            ended = poll(instance.process)
            if ended is None:
                ran = time.time() - instance.process.started_at
                if instance.failures and ran >= self._backoff[1]:
                    instance.failures = 0  # it has run long enough to count as healthy
                return False
            self._exited(app, instance, ended, now)
            return True
        if instance.state is InstanceState.SUCCEEDED or now < instance.due:
            return False
        self._start(app, instance, now)
        return True

    def _exited(self, app: SupervisedApp, instance: Instance, ended: Exit, now: float) -> None:
        if instance.process is not None:
            sweep_group(instance.process)
        reason = None if ended.succeeded else startup_error(instance)
        instance.process = None
        instance.cause = ended.describe() + (f": {reason}" if reason else "")
        if instance.launch.job and ended.succeeded:
            instance.state = InstanceState.SUCCEEDED
            log.info("app %s: %s succeeded", app.name, instance.name)
            return
        instance.state = InstanceState.PENDING if ended.succeeded else InstanceState.FAILED
        delay = self._delay(instance)
        instance.due = now + delay
        # The cause is only an exit code; the why (a port in use...) is in the output it wrote.
        log.warning(
            "app %s: %s %s (its output: %s); restarting in %.1f s",
            app.name, instance.name, instance.cause, instance.launch.log_file, delay,
        )  # fmt: skip

    def _start(self, app: SupervisedApp, instance: Instance, now: float) -> None:
        if instance.attempted:
            instance.restarts += 1
        instance.attempted = True
        launch = instance.launch
        try:
            instance.process = spawn(
                launch.argv, env=launch.env, cwd=launch.cwd, log_file=launch.log_file
            )
        except OSError as exc:
            what = exc.filename or launch.argv[0]
            reason = (exc.strerror or str(exc)).lower()
            self._failed_to_start(app, instance, f"cannot run {what}: {reason}", now)
            return
        except (ValueError, subprocess.SubprocessError) as exc:
            self._failed_to_start(app, instance, f"cannot run {launch.argv[0]}: {exc}", now)
            return
        instance.state = InstanceState.RUNNING
        instance.started_at = instance.process.started_at

    def _failed_to_start(
        self, app: SupervisedApp, instance: Instance, cause: str, now: float
    ) -> None:
        instance.state = InstanceState.FAILED
        instance.cause = cause
        delay = self._delay(instance)
        instance.due = now + delay
        log.warning("app %s: %s: %s; trying again in %.1f s", app.name, instance.name, cause, delay)

    def _delay(self, instance: Instance) -> float:
        """Count one more consecutive failure; the back-off before the next start."""
        instance.failures += 1
        first, longest = self._backoff
        return float(min(longest, first * 2 ** min(instance.failures - 1, 62)))

    def _next_wakeup(self) -> float:
        """Sleep until the next poll, or sooner if a restart falls due before it."""
        now = time.monotonic()
        wait = self._poll_interval
        for app in self._apps.values():
            for instance in app.instances:
                if instance.process is None and instance.state is not InstanceState.SUCCEEDED:
                    wait = min(wait, instance.due - now)
        return max(wait, 0.0)

    def _instances(self, name: str, version: str, app_dir: Path, plan: Plan) -> list[Instance]:
        """The instances of an app version: each service ``replicas`` times."""
        dirs = volume_dirs(app_dir, plan)
        instances = []
        for service in plan.services:
            for replica in range(plan.replicas):
                env = dict(self._base_env)
                env.update(service.env)
                env["BAETYL_APP_NAME"] = name
                env["BAETYL_APP_VERSION"] = version
                env["BAETYL_SERVICE_NAME"] = service.name
                env["BAETYL_INSTANCE_NAME"] = f"{service.name}-{replica}"
                for volume, path in dirs.items():
                    env[f"BAETYL_VOLUME_{env_suffix(volume)}"] = str(path)
                for volume in service.mounts:
                    env[f"BAETYL_MOUNT_{env_suffix(volume)}"] = str(dirs[volume])
                if service.functions:
                    port_file = app_dir / "run" / f"{service.name}-{replica}.port"
                    env[PORT_FILE_ENV] = str(port_file)
                launch = Launch(
                    argv=service.argv,
                    env=env,
                    cwd=service.workdir or app_dir,
                    log_file=log_file(app_dir, service.name),
                    job=plan.workload is Workload.JOB,
                )
                instances.append(Instance(service, replica, launch))
        return instances

    def _save(self, app: SupervisedApp) -> None:
        if app.dir is None:
            return
        try:
            write_state(app.dir, app.record())
        except OSError as exc:
            log.error("cannot record the state of app %s in %s: %s", app.name, app.dir, exc)

    def _rotate_logs(self, paths: Sequence[Path]) -> None:
        for path in paths:
            try:
                if rotate(path, max_bytes=self._log_max_bytes, backups=self._log_backups):
                    log.info("rotated %s", path)
            except OSError as exc:  # e.g. the app was removed meanwhile
                log.debug("cannot rotate %s: %s", path, exc)


def _remove_strays(apps_root: Path, known: set[Path]) -> None:
    """Remove the app version directories under ``apps_root`` other than ``known`` ones."""
    if not apps_root.is_dir():
        return
    for name_dir in apps_root.iterdir():
        if name_dir.is_dir() and not name_dir.is_symlink():
            for version_dir in name_dir.iterdir():
                if version_dir not in known:
                    log.info("removing %s, which no app uses", version_dir)
                    shutil.rmtree(version_dir, ignore_errors=True)
            if not any(name_dir.iterdir()):
                name_dir.rmdir()

"""What a fault scenario runs against: the real cloud, its API, a simulated fleet, real agents.

:class:`World` is an async context manager. Entering it: ``baetyl certs init`` in a fresh work
directory, a certificate per simulated node from that CA, ``baetyl up`` on the given MariaDB
database, an API token (``baetyl tokens create``), the resources (configs, apps selecting node
groups), every node created through the API, the agents activated and started, the fleet
connected and in sync. Leaving it stops everything it started, whatever happened.

The resources make desired writes reach many nodes at once: node ``n<i>`` carries the label
``group=g<i mod groups>``; app ``app-<k>`` selects a few groups and mounts config
``conf-<k mod 3>``; ``app-all`` selects every group and mounts ``conf-all``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from tests.faults.agents import MARK, Agents, agent_converged
from tests.faults.cloud import Rest, StoredShadow, Up, read_shadows
from tests.faults.fleet import Fleet, issue_nodes
from tests.faults.simnode import SimNode, Target
from tests.support.db import Database
from tests.support.polling import until

__all__ = ["PROBE", "Profile", "World", "until"]

NAMESPACE = "default"
PROBE = "probe"  # a simulated node that the storm never drops
APPS = 4
CONFIGS = 3


@dataclass(frozen=True, slots=True)
class Profile:
    """How big and how rough a run is. ``ci`` is the default; ``long`` is run by hand."""

    name: str = "ci"
    nodes: int = 200
    agents: int = 2
    groups: int = 8
    chaos_seconds: float = 40.0
    cloud_kills: int = 2
    # Let a random SIGKILL land inside an API write (the restarted cloud reconciles; the
    # deterministic case is test_sigkill_mid_write.py). False: wait for the write to finish.
    kill_mid_write: bool = True
    agent_kills: int = 1
    write_pause: tuple[float, float] = (0.1, 0.4)  # seconds between two API writes
    drop_every: float = 1.0  # seconds between two rounds of random disconnects
    drop_count: int = 5  # nodes cut per round
    report_every: float = 1.0  # seconds between two rounds of random reports
    report_count: int = 20  # nodes reporting per round
    converge_limit: float = 120.0  # seconds after the faults stop
    storm_limit: float = 60.0  # seconds for every dropped node to resync
    probe_rate: float = 5.0  # reports per second of the node that is never dropped
    probe_bound: float = 10.0  # seconds: the slowest answer it may get
    reconnect: str = "agent"  # the nodes' reconnect policy; "full-jitter" for comparison
    seed: int = 9

    @classmethod
    def from_env(cls) -> Profile:
        """``BAETYL_FAULTS_PROFILE`` (ci, long) and ``BAETYL_FAULTS_NODES`` (overrides N)."""
        name = os.environ.get("BAETYL_FAULTS_PROFILE", "ci")
        profile = LONG if name == "long" else cls()
        if name not in ("ci", "long"):
            raise ValueError(f"BAETYL_FAULTS_PROFILE is {name!r}; use 'ci' or 'long'.")
        nodes = os.environ.get("BAETYL_FAULTS_NODES")
        return replace(profile, nodes=int(nodes)) if nodes else profile


LONG = Profile(
    name="long", nodes=5000, chaos_seconds=240.0, cloud_kills=3, agent_kills=2,
    write_pause=(1.0, 3.0), drop_every=1.0, drop_count=25, report_every=1.0, report_count=100,
    converge_limit=600.0, storm_limit=300.0,
)  # fmt: skip


async def seconds_until(
    check: Callable[[], Awaitable[bool]], limit: float, what: str, *, every: float = 0.25
) -> float:
    """``until`` (tests/support/polling.py), and the seconds it took: a scenario's figure."""
    started = time.monotonic()
    await until(check, limit, what, every=every)
    return time.monotonic() - started


def sleeper() -> list[str]:
    """An app's command: a process that just stays up."""
    path = shutil.which("sleep")
    assert path is not None
    return [path, "3600"]


class World:
    """See the module docstring."""

    def __init__(self, workdir: Path, database: Database, profile: Profile) -> None:
        self.workdir = workdir
        self.database = database
        self.profile = profile
        self.rng = random.Random(profile.seed)  # noqa: S311 # load shapes, not secrets
        self.marker = uuid.uuid4().hex
        self.up = Up(workdir, database.url)
        self.agents = Agents(workdir, self.marker)
        self.agent_names = [f"agent-{i}" for i in range(profile.agents)]
        self.names = [f"n{i}" for i in range(profile.nodes)]
        self.target = Target("127.0.0.1", 0)
        self.ca_dir = workdir / "baetyl-data" / "ca"
        self.fleet = Fleet(NAMESPACE, [*self.names, PROBE], workdir / "pki",
                           self.ca_dir / "ca.crt", self.target, seed=profile.seed,
                           reconnect=profile.reconnect)  # fmt: skip
        self.apps: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._rest: Rest | None = None

    @property
    def rest(self) -> Rest:
        assert self._rest is not None
        return self._rest

    def group(self, index: int) -> str:
        return f"g{index % self.profile.groups}"

    async def __aenter__(self) -> Self:
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.fleet.stop()
        await asyncio.to_thread(self.agents.close)
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.up.stop)

    async def _setup(self) -> None:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.up.run, "certs", "init")
        await asyncio.to_thread(
            issue_nodes, self.ca_dir, self.workdir / "pki", NAMESPACE, [*self.names, PROBE]
        )
        self.timings["certificates_s"] = time.monotonic() - started
        ports = await self.up.start()
        self.target.port = ports["mqtts"]
        token = await asyncio.to_thread(self.up.run, "tokens", "create", "--name", "faults")
        self._session = aiohttp.ClientSession()
        self._rest = Rest(self._session, f"http://127.0.0.1:{ports['api']}",
                          token.strip().splitlines()[-1])  # fmt: skip
        mark = time.monotonic()
        await self._create_resources()
        self.timings["api_setup_s"] = time.monotonic() - mark
        for index, name in enumerate(self.agent_names):
            await self.agents.add(self.rest, name, {"group": self.group(index)})
            self.agents.start(name)
        mark = time.monotonic()
        await self.fleet.start()
        await self.wait_synced(self.profile.converge_limit, "the fleet's first sync")
        self.timings["first_sync_s"] = time.monotonic() - mark
        self.timings["setup_s"] = time.monotonic() - started

    async def _create_resources(self) -> None:
        for name in [f"conf-{k}" for k in range(CONFIGS)] + ["conf-all"]:
            await self.rest.ok("POST", "/configs", {"name": name, "data": {"v": "0"}})
        for k in range(APPS):
            self.apps[f"app-{k}"] = self.app_body(
                f"app-{k}", f"group in ({self.group(k)},{self.group(k + 1)})", f"conf-{k % CONFIGS}"
            )
        self.apps["app-all"] = self.app_body("app-all", "group", "conf-all")
        for body in self.apps.values():
            await self.rest.ok("POST", "/apps", body)
        gate = asyncio.Semaphore(8)

        async def create(index: int, name: str) -> None:
            async with gate:
                await self.rest.ok(
                    "POST", "/nodes", {"name": name, "labels": {"group": self.group(index)}}
                )

        await asyncio.gather(*(create(i, name) for i, name in enumerate(self.names)))
        await create(0, PROBE)

    def app_body(self, name: str, selector: str, config: str) -> dict[str, Any]:
        """A native app the agents can run: a sleeper that mounts ``config``."""
        return {
            "name": name,
            "type": "native",
            "selector": selector,
            "services": [
                {"name": "main", "command": sleeper(),
                 "env": [{"name": MARK, "value": self.marker}]}
            ],
            "volumes": [{"name": "conf", "config": {"name": config}}],
        }  # fmt: skip

    # -- convergence -----------------------------------------------------------------------------

    def unsynced(self, shadows: dict[str, StoredShadow], nodes: list[SimNode]) -> list[str]:
        """The nodes whose books disagree with the database, or still have work in flight,
        each with what is off."""
        out = []
        now = time.monotonic()
        for node in nodes:
            stored = shadows.get(node.node_id)
            if stored is None:
                out.append(f"{node.node_id}: no shadow")
                continue
            off = []
            if not node.online:
                off.append("offline")
            if node.get is not None:
                off.append(f"desire/get unanswered for {now - node.get.sent_at:.1f} s")
            if node.in_flight is not None:
                off.append(f"report in flight for {now - node.in_flight.sent_at:.1f} s")
            if node.pending is not None:
                off.append(f"report waiting (retry in {node.retry_at - now:.1f} s)")
            if node.follower.version != stored.desired_version:
                off.append(f"desired version {node.follower.version}, stored "
                           f"{stored.desired_version}")  # fmt: skip
            elif node.desired != stored.desired:
                off.append("same desired version, other document")
            if node.reported != stored.reported:
                off.append(f"reported {node.reported}, stored {stored.reported}")
            if off:
                out.append(f"{node.node_id}: {', '.join(off)}")
        return out

    async def wait_synced(self, limit: float, what: str) -> float:
        """Wait until every simulated node is idle and agrees with the database, and every agent
        reports its desired apps running; the seconds it took."""
        nodes = list(self.fleet.nodes.values())
        behind: list[str] = []
        agents: list[str] = []

        async def synced() -> bool:
            nonlocal behind, agents
            self.fleet.check_alive()
            self.agents.check_running()
            behind = self.unsynced(await read_shadows(self.database), nodes)
            agents = [] if behind else await self.agents_behind()
            return not behind and not agents

        try:
            return await seconds_until(synced, limit, what, every=0.5)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; {len(behind)} nodes behind, e.g. {behind[:5]}; agents behind: {agents}"
            ) from None

    async def agents_behind(self) -> list[str]:
        """The agents whose node view does not show their desired apps running, with the view."""
        out = []
        for name in self.agent_names:
            view = await self.rest.ok("GET", f"/nodes/{name}")
            if not agent_converged(view):
                report, desire = view["report"], view["desire"].get("apps")
                stats = report.get("appstats")
                out.append(f"{name}: online {view['online']}, desire {desire}, "
                           f"apps {report.get('apps')}, appstats {stats}; "
                           f"log {self.agents.log_tail(name)}")  # fmt: skip
        return out

"""The fault scenarios, shared by the tests (CI profile) and ``bench/faults.py`` (long profile).

Each takes a :class:`~tests.faults.world.World`, injects its faults, checks its invariants and
returns its figures (a JSON-able dict). ``problems`` in the figures lists every invariant that
failed, with examples; the callers assert it is empty, so a run by hand still writes its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from tests.faults.agents import agent_converged
from tests.faults.cloud import StoredShadow, read_shadows
from tests.faults.fleet import summary
from tests.faults.simnode import ANSWER_TIMEOUT, SimNode
from tests.faults.world import APPS, CONFIGS, PROBE, World

__all__ = ["POLICIES", "convergence", "storm", "summary_line"]

POLICIES = {
    "agent": "edge agent (paho): first delay round(U[1,2)) s per client, doubled per failure, "
    "at most 60 s",
    "full-jitter": "comparison, not the agent's: U[0, min(60, 2^(failures+1))) s",
}


@dataclass
class Ledger:
    """The faults a run injected, and what the checks after each SIGKILL found."""

    cloud_sigkills: int = 0
    agent_sigkills: int = 0
    node_disconnects: int = 0
    desired_writes: int = 0
    writes_interrupted: int = 0  # an API write cut by a SIGKILL: it may or may not have happened
    random_reports: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def _problem(problems: list[str], what: str, offenders: list[str]) -> None:
    if offenders:
        problems.append(f"{what}: {len(offenders)}, e.g. {offenders[:5]}")


async def _every(stop: asyncio.Event, pause: float, act: Callable[[], None]) -> None:
    """Run ``act`` every ``pause`` seconds until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
            return
        act()


class Chaos:
    """The faults of the convergence scenario, run side by side for ``profile.chaos_seconds``."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.profile = world.profile
        self.rng = world.rng
        self.ledger = Ledger()
        self.cloud_up = asyncio.Event()
        self.cloud_up.set()
        self.writing = asyncio.Event()  # set while no API write is in flight
        self.writing.set()
        self.watchers: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        stop = asyncio.Event()
        profile, fleet = self.profile, self.world.fleet
        started = time.monotonic()
        tasks = [
            asyncio.create_task(self._writer(stop)),
            asyncio.create_task(_every(stop, profile.drop_every, self._drop)),
            asyncio.create_task(_every(stop, profile.report_every, self._report)),
            asyncio.create_task(self._killer(started)),
            asyncio.create_task(self._agent_killer(started)),
        ]
        try:
            while time.monotonic() - started < profile.chaos_seconds:
                fleet.check_alive()
                for task in tasks:
                    if task.done():
                        task.result()  # a fault task failed: raise its error now
                await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *self.watchers]:
                task.cancel()
            await asyncio.gather(*tasks, *self.watchers, return_exceptions=True)

    async def _at(self, started: float, fraction: float) -> None:
        await asyncio.sleep(max(0.0, started + self.profile.chaos_seconds * fraction
                                - time.monotonic()))  # fmt: skip

    # -- desired writes through the API ----------------------------------------------------------

    async def _writer(self, stop: asyncio.Event) -> None:
        pause = self.profile.write_pause
        while not stop.is_set():
            await self.cloud_up.wait()
            self.writing.clear()
            try:
                await self._write()
                self.ledger.desired_writes += 1
            except (aiohttp.ClientError, TimeoutError):
                if self.cloud_up.is_set():
                    raise
                self.ledger.writes_interrupted += 1
            finally:
                self.writing.set()
            await asyncio.sleep(self.rng.uniform(*pause))

    async def _write(self) -> None:
        world, rng = self.world, self.rng
        kind = rng.choices(["props", "selector", "config", "relabel"], weights=[4, 2, 2, 2])[0]
        if kind == "props":
            name = rng.choice(world.names)
            props = {"desire": {"p": rng.randrange(10**6)}}
            await world.rest.ok("PUT", f"/nodes/{name}/properties", props)
        elif kind == "selector":
            app = world.apps[f"app-{rng.randrange(APPS)}"]
            groups = rng.sample(range(self.profile.groups), rng.randint(1, 3))
            app["selector"] = f"group in ({','.join(world.group(g) for g in groups)})"
            await world.rest.ok("PUT", f"/apps/{app['name']}", app)
        elif kind == "config":
            name = rng.choice([f"conf-{k}" for k in range(CONFIGS)] + ["conf-all"])
            body = {"name": name, "data": {"v": str(rng.randrange(10**6))}}
            await world.rest.ok("PUT", f"/configs/{name}", body)
        else:  # a node moves to another group (a PUT replaces its properties too)
            name = rng.choice(world.names)
            labels = {"group": world.group(rng.randrange(self.profile.groups))}
            await world.rest.ok("PUT", f"/nodes/{name}", {"name": name, "labels": labels})

    # -- node faults -----------------------------------------------------------------------------

    def _drop(self) -> None:
        self.ledger.node_disconnects += self.world.fleet.drop(
            self.world.fleet.pick(self.profile.drop_count)
        )

    def _report(self) -> None:
        nodes = list(self.world.fleet.nodes.values())
        for node in self.rng.sample(nodes, min(self.profile.report_count, len(nodes))):
            node.put({"load": self.rng.randrange(100)})
            self.ledger.random_reports += 1

    async def _agent_killer(self, started: float) -> None:
        names = self.world.agent_names
        for k in range(self.profile.agent_kills if names else 0):
            await self._at(started, (k + 0.5) / (self.profile.agent_kills + 0.5))
            name = names[k % len(names)]
            self.world.agents.kill(name)
            self.ledger.agent_sigkills += 1
            await asyncio.sleep(1.0)  # the agent stays dead a moment (its apps keep running)
            self.world.agents.start(name)

    # -- the cloud SIGKILLed ---------------------------------------------------------------------

    async def _killer(self, started: float) -> None:
        for k in range(self.profile.cloud_kills):
            await self._at(started, (k + 1) / (self.profile.cloud_kills + 1))
            await self.kill_and_restart()

    async def kill_and_restart(self) -> None:
        """SIGKILL the cloud; check every accepted report is in the database; start it again."""
        world, fleet = self.world, self.world.fleet
        self.cloud_up.clear()
        # Anywhere, an API write included (the restarted cloud finishes a push cut short), unless
        # the profile asks to wait for the write in flight.
        if not self.profile.kill_mid_write:
            await self.writing.wait()
        await world.up.kill()
        killed = time.monotonic()
        self.ledger.cloud_sigkills += 1
        # Once every node has seen its connection close, no answer the cloud sent is unread.
        await fleet.wait_until(lambda: fleet.online() == 0, 30, "every node to see the cloud die")
        accepted = {node.node_id: node.accepted_seq for node in fleet.nodes.values()}
        shadows = await read_shadows(world.database)
        lost = [node_id for node_id, seq in accepted.items()
                if seq and shadows[node_id].reported.get("seq", 0) < seq]  # fmt: skip
        await world.up.start()
        restarted = time.monotonic()
        down = restarted - killed
        self.cloud_up.set()
        # After the restart, the API shows at least what was accepted before the kill.
        views = await world.rest.nodes()
        shown = [name for name, view in views.items()
                 if accepted.get(f"default.{name}", 0) > view["report"].get("seq", 0)]  # fmt: skip
        self.ledger.lost += [*lost, *shown]
        record: dict[str, Any] = {
            "accepted_reports_so_far": sum(n.book.accepted for n in fleet.nodes.values()),
            "nodes_with_accepted_reports": sum(1 for seq in accepted.values() if seq),
            "lost_in_database": len(lost),
            "lost_in_api_after_restart": len(shown),
            "down_s": round(down, 3),
            "all_resynced_s": None,  # stays None if the fault phase ended first
        }
        self.ledger.kills.append(record)
        self.watchers.append(asyncio.create_task(self._resynced(record, restarted)))

    async def _resynced(self, record: dict[str, Any], restarted: float) -> None:
        """Record when every node has had desire/get answered since the restart."""
        nodes = list(self.world.fleet.nodes.values())
        while any(node.resynced_at < restarted for node in nodes):  # noqa: ASYNC110 # polling
            await asyncio.sleep(0.2)
        record["all_resynced_s"] = round(max(n.resynced_at for n in nodes) - restarted, 3)


async def convergence(world: World) -> dict[str, Any]:
    """Convergence and no loss under desired writes, disconnects, agent and cloud SIGKILLs."""
    chaos = Chaos(world)
    started = time.monotonic()
    await chaos.run()
    chaos_s = time.monotonic() - started
    converge_s = await world.wait_synced(world.profile.converge_limit, "convergence after faults")
    fleet, ledger = world.fleet, chaos.ledger
    shadows = await read_shadows(world.database)
    views = await world.rest.nodes()
    problems: list[str] = []
    nodes = list(fleet.nodes.values())
    node_checks: dict[str, Callable[[SimNode, dict[str, Any], StoredShadow], bool]] = {
        "nodes whose desired state differs from the API's": (
            lambda node, view, stored: view["desire"] != node.desired
        ),
        "nodes not at the stored desired version": (
            lambda node, view, stored: node.follower.version != stored.desired_version
        ),
        "nodes whose reported state in the API is not what they sent": (
            lambda node, view, stored: view["report"] != node.reported
        ),
        "nodes whose accepted reports are not all stored": (
            lambda node, view, stored: stored.reported.get("seq", 0) < node.accepted_seq
        ),
    }
    for what, check in node_checks.items():
        _problem(problems, what, [node.node_id for node in nodes if check(
            node, views[node.node_id.partition(".")[2]], shadows[node.node_id])])  # fmt: skip
    view_checks: dict[str, Callable[[dict[str, Any]], bool]] = {
        "nodes whose desired apps differ from what their apps select": (
            lambda view: view["desire"].get("apps") != view["apps"]
        ),
        "nodes whose desired properties differ from their properties": (
            lambda view: view["desire"].get("nodeprops") != (view.get("properties") or {})
        ),
    }
    for what, view_check in view_checks.items():
        _problem(problems, what, [name for name, view in views.items() if view_check(view)])
    agents = {name: views[name] for name in world.agent_names}
    _problem(problems, "agents with no desired app (app-all selects them)",
             [name for name, view in agents.items() if not view["desire"].get("apps")])  # fmt: skip
    _problem(problems, "agents not running their desired apps",
             [name for name, view in agents.items() if not agent_converged(view)])  # fmt: skip
    _problem(problems, "accepted reports lost across a SIGKILL", ledger.lost)
    totals = fleet.totals()
    _check_books(problems, totals)
    _problem(problems, "ERROR lines in the cloud's log", world.up.errors().splitlines())
    unstored = [n for n in nodes if shadows[n.node_id].reported.get("seq", 0) < n.accepted_seq]
    lost = len(ledger.lost) + totals["overdue"] + len(unstored)
    return {
        "scenario": "convergence",
        "profile": world.profile.name,
        "nodes": len(nodes),
        "agents": len(world.agent_names),
        "chaos_s": round(chaos_s, 1),
        "faults": {k: v for k, v in asdict(ledger).items() if k not in ("kills", "lost")},
        "kills": ledger.kills,
        "time_to_converge_s": round(converge_s, 2),
        "messages_lost": lost,
        "reports_accepted": totals["accepted"],
        "nodes_book": totals,
        "setup": {k: round(v, 1) for k, v in world.timings.items()},
        "problems": problems,
    }


def _check_books(problems: list[str], totals: dict[str, Any]) -> None:
    if totals["overdue"]:
        problems.append(f"{totals['overdue']} requests never answered on a live connection")
    if totals["malformed"]:
        problems.append(f"{totals['malformed']} messages from the cloud did not parse")
    refused = {code: n for code, n in totals["rejected"].items() if code != "429"}
    if refused:
        problems.append(f"requests refused with codes other than 429: {refused}")


async def storm(world: World) -> dict[str, Any]:
    """Every node but the probe dropped at once: they reconnect with the agent's back-off and
    resync, while the probe keeps reporting and measures how long its answers take."""
    fleet, profile = world.fleet, world.profile
    probe = fleet.node(PROBE)
    dropped = [node for node in fleet.nodes.values() if node is not probe]
    before: list[float] = []
    during: list[float] = []
    unanswered: list[int] = []
    phase = before
    stop = asyncio.Event()

    async def probing() -> None:
        sent = 0
        while not stop.is_set():
            begun = time.monotonic()
            sent += 1
            probe.put({"probe": sent})
            probe.ping()
            # Waited for past the bound (up to the agent's own resend timeout), to measure it.
            seq, deadline = probe.seq, begun + ANSWER_TIMEOUT
            while probe.accepted_seq < seq and time.monotonic() < deadline:
                probe.answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(probe.answered.wait(), deadline - time.monotonic())
            if probe.accepted_seq >= seq:
                phase.append(time.monotonic() - begun)
            else:
                unanswered.append(sent)
            await asyncio.sleep(max(0.0, begun + 1 / profile.probe_rate - time.monotonic()))

    failures_before = fleet.totals()["connect_failures"]
    task = asyncio.create_task(probing())
    try:
        await asyncio.sleep(3.0)  # the probe's baseline, with everyone connected
        phase = during
        probe.ping_rtts.clear()
        dropped_at = time.monotonic()
        count = fleet.drop(dropped)
        # A desired change for every node while they are away: they must come back to it.
        await world.rest.ok("PUT", "/configs/conf-all", {"name": "conf-all", "data": {"v": "x"}})
        await world.wait_synced(profile.storm_limit, "every dropped node to resync")
        resync = [node.resynced_at - dropped_at for node in dropped]
        reconnect = [node.connected_at - dropped_at for node in dropped]
        pings = list(probe.ping_rtts)
        all_back = time.monotonic() - dropped_at
        stop.set()
        await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    problems: list[str] = []
    _problem(problems, "dropped nodes that did not resync after the drop",
             [n.node_id for n, t in zip(dropped, resync, strict=True) if t <= 0])  # fmt: skip
    slow = [f"{t:.1f} s" for t in during if t > profile.probe_bound]
    _problem(problems, f"probe reports answered after more than {profile.probe_bound:.0f} s",
             slow)  # fmt: skip
    _problem(problems, f"probe reports not answered within {ANSWER_TIMEOUT:.0f} s",
             [str(i) for i in unanswered])  # fmt: skip
    totals = fleet.totals()
    _check_books(problems, totals)
    return {
        "scenario": "storm",
        "profile": profile.name,
        "nodes": len(fleet.nodes),
        "dropped": count,
        "policy": POLICIES[profile.reconnect],
        "time_to_resync_all_s": round(max(resync), 3),
        "time_to_verified_s": round(all_back, 2),
        "reconnect_s": summary(reconnect),
        "resync_s": summary(resync),
        "connect_failures": totals["connect_failures"] - failures_before,
        "probe_answer_s_before": summary(before),
        "probe_answer_s_during": summary(during),
        "probe_ping_rtt_s_during": summary(pings),
        "probe_reports": len(before) + len(during) + len(unanswered),
        "probe_over_bound": len(slow) + len(unanswered),
        "messages_lost": totals["overdue"],
        "reports_accepted": totals["accepted"],
        "setup": {k: round(v, 1) for k, v in world.timings.items()},
        "problems": problems,
    }


def summary_line(figures: dict[str, Any]) -> str:
    """One line with a scenario's main figures."""
    head = f"faults {figures['scenario']} [{figures['profile']}]: {figures['nodes']} nodes"
    if figures["scenario"] == "convergence":
        faults = figures["faults"]
        return (
            f"{head} + {figures['agents']} agents; {faults['cloud_sigkills']} cloud SIGKILLs, "
            f"{faults['agent_sigkills']} agent SIGKILLs, {faults['node_disconnects']} "
            f"disconnects, {faults['desired_writes']} desired writes, "
            f"{faults['random_reports']} random reports; converged in "
            f"{figures['time_to_converge_s']} s; {figures['reports_accepted']} reports "
            f"accepted; {figures['messages_lost']} lost"
        )
    resync, probe = figures["resync_s"], figures["probe_answer_s_during"]
    return (
        f"{head}, {figures['dropped']} dropped at once; all resynced in "
        f"{figures['time_to_resync_all_s']} s (p50 {resync['p50']} s, p99 {resync['p99']} s); "
        f"probe answers p50 {probe['p50']} s, p99 {probe['p99']} s, max {probe['max']} s; "
        f"{figures['messages_lost']} lost"
    )

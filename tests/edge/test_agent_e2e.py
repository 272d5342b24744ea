"""The edge agent end to end: the real cloud in the test's loop, a real agent subprocess.

Activation from the install command, the node online in the API, a native app started from a
config, restarted when the config changes, removed when the app is deleted; the agent killed
and restarted without duplicating the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shadow import DesiredFollower
from tests.edge.kube_standin import KubeStandIn
from tests.support.agent import (
    Partition,
    activate_node,
    app_wrote,
    node_online,
    point_agent_at,
    post_site_app,
    written,
)
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until
from tests.support.processes import alive, marked_processes

# An app with no config: writes its pid to OUT, then stays up.
APP_NO_CONFIG = (
    "import os, pathlib, time\n"
    "pathlib.Path(os.environ['OUT']).write_text(str(os.getpid()))\n"
    "while True: time.sleep(1)\n"
)


async def test_agent_runs_the_nodes_apps_end_to_end(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Online, app started from its config, restarted on change, re-adopted, removed."""
    out = tmp_path / "app-out.txt"
    agent = start_agent()

    online = functools.partial(node_online, api)

    await until(online, what="the node to be online")

    config = await post_site_app(api, out)

    wrote = functools.partial(app_wrote, out)

    first = await until(lambda: wrote("one"), what="the app to start with the config")
    assert alive(first)

    async def reported_running() -> bool:
        stats = (await api.call("GET", "/nodes/gw-1/stats"))[1]
        entries = [s for s in stats["appstats"] if s["name"] == "web"]
        return bool(
            entries
            and entries[0]["status"] == "Running"
            and any(i["pid"] == first for i in entries[0]["instances"].values())
        )

    await until(reported_running, what="the API to show the app Running with its pid")

    # The config changes: the app restarts with the new file; the old process is gone.
    config["data"] = {"msg.txt": "two"}
    assert (await api.call("PUT", "/configs/site", config))[0] == 200
    second = await until(lambda: wrote("two"), what="the app to restart with the new config")
    assert second != first
    await until(lambda: asyncio.sleep(0, not alive(first)), what="the old process to stop")

    # The agent dies; the app keeps running; a new agent adopts it instead of starting another.
    agent.kill()
    agent.wait(10)
    assert alive(second)
    start_agent()
    await until(online, what="the node to be online again")
    await asyncio.sleep(3)  # time for a duplicate to appear if adoption failed
    assert marked_processes(str(out)) == [second]

    # The app is deleted: its process goes away.
    assert (await api.call("DELETE", "/apps/web"))[0] == 204
    await until(lambda: asyncio.sleep(0, not alive(second)), what="the app to stop")
    assert marked_processes(str(out)) == []


async def test_a_partition_keeps_apps_running_and_catches_up_after(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Cut from the broker, the app keeps running; a change made meanwhile arrives after."""
    partition = Partition(cloud.mqtt_port)
    await partition.start()
    try:
        await _partition_scenario(partition, cloud, api, agent_dir, start_agent, tmp_path)
    finally:
        await partition.cut()
        await asyncio.sleep(0.1)  # let the relays see their sockets closed


async def _partition_scenario(
    partition: Partition,
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    point_agent_at(agent_dir, partition.port)
    out = tmp_path / "app-out.txt"
    start_agent()

    online = functools.partial(node_online, api)

    await until(online, what="the node to be online")
    config = await post_site_app(api, out)

    wrote = functools.partial(app_wrote, out)

    first = await until(lambda: wrote("one"), what="the app to start")

    await partition.cut()
    await until(lambda: asyncio.sleep(0, not cloud.context.shadow.online("default.gw-1")),
                what="the cloud to see the node go")  # fmt: skip
    config["data"] = {"msg.txt": "two"}
    assert (await api.call("PUT", "/configs/site", config))[0] == 200
    await asyncio.sleep(2)
    assert alive(first)  # offline, the app keeps running as it was
    assert await wrote("one") == first

    await partition.start()  # the network is back (same port)
    second = await until(lambda: wrote("two"), limit=40, what="the change made meanwhile")
    assert second != first

    async def reported_new_version() -> bool:
        node = (await api.call("GET", "/nodes/gw-1"))[1]
        apps = node["report"].get("apps", [])
        return bool(node["online"] and apps == [{"name": "web", "version": "2"}])

    await until(reported_new_version, limit=30, what="the report of the running version")


def test_the_agent_forgets_specs_no_applied_app_uses(tmp_path: Path) -> None:
    """After a config change, the old config's data (a secret's, likewise) leaves agent.json."""
    from edge.agentstate import AgentState
    from edge.specbook import SpecBook

    state = AgentState(tmp_path / "agent.json", "a1")  # only the spec bookkeeping: no agent
    state.specs = SpecBook({
        "app/web/2": {"volumes": [{"name": "s", "secret": {"name": "pw", "version": "2"}}]},
        "app/web/1": {"volumes": [{"name": "s", "secret": {"name": "pw", "version": "1"}}]},
        "secret/pw/1": {"data": {"p": "old"}},
        "secret/pw/2": {"data": {"p": "new"}},
    })  # fmt: skip
    state.follower = DesiredFollower(2)
    state.applied = [("web", "2")]
    state.specs.prune([("web", "2")])
    state.save()
    assert set(state.specs.to_json()) == {"app/web/2", "secret/pw/2"}
    assert "old" not in (tmp_path / "agent.json").read_text()


class FailingSpecs:
    """The cloud's spec source, failing while ``failing`` is set (the database away, say):
    each ``resource/get`` is then answered 500 and the agent gets no spec."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = True
        self.only: str | None = None  # "<kind>/<name>": fail only that one's answers
        self.failed = 0
        self.served = 0

    async def resource(self, node_id: str, kind: Any, name: str, version: str) -> Any:
        if self.failing and self.only in (None, f"{kind}/{name}"):
            self.failed += 1
            raise RuntimeError("injected: the spec store is unavailable")
        self.served += 1
        return await self.inner.resource(node_id, kind, name, version)


@pytest.fixture
def failing_specs(cloud: RunningCloud) -> Iterator[FailingSpecs]:
    """Every spec the agents ask for fails until the test clears ``failing``."""
    service = cloud.context.shadow
    flaky = FailingSpecs(service._resources)
    service._resources = flaky
    yield flaky
    service._resources = flaky.inner


async def test_the_agent_asks_again_for_a_spec_whose_answer_failed(
    api: Api,
    failing_specs: FailingSpecs,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """A ``resource/get`` answered 500 is asked again, later: the app runs once specs are back."""
    out = tmp_path / "app-out.txt"
    start_agent()
    await post_site_app(api, out)
    await until(lambda: asyncio.sleep(0, failing_specs.failed >= 1), what="a spec to fail")
    failing_specs.failing = False
    await until(
        lambda: asyncio.sleep(0, written(out).endswith(" one")), limit=30, what="the app to start"
    )
    assert failing_specs.served >= 2  # the app's spec and its config's, asked again


async def test_a_restarted_agent_fetches_the_specs_it_still_lacks(
    api: Api,
    agent_dir: Path,
    failing_specs: FailingSpecs,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Killed after storing a desired state whose specs never came, the agent asks for them
    after the restart, although the cloud's desired version is the one it already holds."""
    out = tmp_path / "app-out.txt"
    agent = start_agent()
    await post_site_app(api, out)

    def holds_desired() -> bool:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((agent_dir / "agent.json").read_text())
            return bool(state["desired"].get("apps")) and failing_specs.failed >= 1
        return False

    await until(lambda: asyncio.sleep(0, holds_desired()), what="the desired state stored")
    agent.kill()
    agent.wait(10)
    failing_specs.failing = False
    start_agent()
    await until(
        lambda: asyncio.sleep(0, written(out).endswith(" one")),
        what="the app to start after the restart",
    )


def test_specs_are_asked_again_with_a_jittered_growing_delay() -> None:
    """5 s at first, doubling to at most a minute, each spread over half again (not in step)."""
    from edge.specbook import retry_delay

    for attempts, low in [(0, 5.0), (1, 10.0), (2, 20.0), (4, 60.0), (30, 60.0)]:
        delays = [retry_delay(attempts) for _ in range(200)]
        assert all(low <= d <= low * 1.5 for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 100


async def test_an_app_that_could_not_start_is_tried_again_unchanged(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Its files could not be written (a file where its directory goes): the API shows why, and
    once the obstacle is gone the next resync starts it, with no desired change."""
    blocker = agent_dir / "native" / "apps" / "web"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    out = tmp_path / "app-out.txt"
    start_agent("--resync-interval", "1")
    await post_site_app(api, out)

    async def cause() -> str:
        stats = (await api.call("GET", "/nodes/gw-1/stats"))[1]
        return str(next((s.get("cause") for s in stats["appstats"] if s["name"] == "web"), ""))

    assert "could not be written" in await until(cause, what="the app's failure reported")
    version = (await cloud.context.shadow.get("default.gw-1")).desired.version
    blocker.unlink()
    await until(
        lambda: asyncio.sleep(0, written(out).endswith(" one")), what="the app to start on a resync"
    )
    assert (await cloud.context.shadow.get("default.gw-1")).desired.version == version


async def test_the_agent_outlives_a_kubernetes_api_that_fails_and_applies_once_it_is_back(
    api: Api,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """On the kube engine, an apply that fails for good (every namespace read answered 500) is
    logged, the agent stays up and online, and the next resync after the API recovers applies."""
    async with KubeStandIn() as standin:
        standin.fail("GET", "/api/v1/namespaces/baetyl-edge", times=10**6)
        kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
        agent = start_agent(
            "--engine", "kube", "--resync-interval", "1", env={"KUBECONFIG": str(kubeconfig)}
        )
        app = {"name": "web", "type": "container", "selector": "site=x",
               "services": [{"name": "main", "image": "nginx:1.27"}]}  # fmt: skip
        assert (await api.call("POST", "/apps", app))[0] == 201

        def namespace_reads() -> int:
            return standin.requests.count(("GET", "/api/v1/namespaces/baetyl-edge"))

        # Two failed applies: each is the engine's call and its 3 retries.
        await until(lambda: asyncio.sleep(0, namespace_reads() >= 8), limit=40,
                    what="two applies to fail")  # fmt: skip
        assert agent.poll() is None, agent.communicate(timeout=5)[1][-2000:]
        assert (await api.call("GET", "/nodes/gw-1"))[1]["online"]
        assert standin.stored("deployments", "baetyl-edge") == {}
        standin.faults.clear()
        await until(lambda: asyncio.sleep(0, "web" in standin.stored("deployments", "baetyl-edge")),
                    what="the Deployment once the API is back")  # fmt: skip
        assert agent.poll() is None


async def test_a_device_activated_again_as_another_node_follows_that_nodes_desired_state(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """The state directory of gw-1, whose desired version went far, activated as the new gw-2:
    the agent drops gw-1's desired state and runs gw-2's app, although gw-2's desired version
    is below the one the directory held."""
    agent = start_agent()
    for n in range(6):  # each change of the desired node properties is a new desired version
        body = {"desire": {"round": str(n)}}
        assert (await api.call("PUT", "/nodes/gw-1/properties", body))[0] == 200

    def held_version() -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads((agent_dir / "agent.json").read_text())["version"])
        return 0

    gw1 = (await cloud.context.shadow.get("default.gw-1")).desired.version
    await until(lambda: asyncio.sleep(0, held_version() == gw1), what="gw-1's state held")
    agent.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(agent.wait, 20) == 0
    # What gw-1's agent could have left besides: a spec, and a report it had not sent yet.
    kept = json.loads((agent_dir / "agent.json").read_text())
    kept["specs"]["app/gw1-only/1"] = {"services": []}
    (agent_dir / "agent.json").write_text(json.dumps(kept))
    unsent = {"format": 1, "pending": [{"gw1-only": "unsent"}]}
    (agent_dir / "reports.json").write_text(json.dumps(unsent))

    await activate_node(api, "gw-2", {"site": "y"}, agent_dir)
    out = tmp_path / "app-out.txt"
    app = {"name": "other", "type": "native", "selector": "site=y",
           "services": [{"name": "main", "command": [sys.executable, "-c", APP_NO_CONFIG],
                         "env": [{"name": "OUT", "value": str(out)}]}]}  # fmt: skip
    assert (await api.call("POST", "/apps", app))[0] == 201
    assert (await cloud.context.shadow.get("default.gw-2")).desired.version < gw1
    start_agent()
    await until(lambda: asyncio.sleep(0, written(out)), what="gw-2's app to start")
    state = json.loads((agent_dir / "agent.json").read_text())
    assert "round" not in json.dumps(state["desired"])  # nothing of gw-1's desired state kept
    assert "app/gw1-only/1" not in state["specs"]
    assert state["activation"] != kept["activation"]
    reported = (await cloud.context.shadow.get("default.gw-2")).reported.state
    assert "gw1-only" not in reported  # gw-1's unsent report did not go out as gw-2's


async def test_a_stopped_agent_exits_at_once_though_the_cloud_went_silent(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
) -> None:
    """SIGTERM while the connection is up but nothing comes back (reports unacknowledged):
    the agent exits within seconds, not when keepalive finds the connection dead (45 s)."""
    partition = Partition(cloud.mqtt_port)
    await partition.start()
    try:
        point_agent_at(agent_dir, partition.port)
        agent = start_agent()

        online = functools.partial(node_online, api)

        await until(online, what="the node to be online")
        partition.frozen = True
        await asyncio.sleep(2.5)  # a report or two (one a second) now wait for their PUBACK
        agent.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert await asyncio.to_thread(agent.wait, 15) == 0
        assert time.monotonic() - started < 10
    finally:
        await partition.cut()


async def test_an_app_waiting_for_a_spec_keeps_running_and_the_others_go_on(
    api: Api,
    failing_specs: FailingSpecs,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """web's new config cannot be fetched: web keeps running at its old version, while the new
    version of another app starts; once the config comes, web moves to it."""
    failing_specs.failing = False
    web_out, other_out = tmp_path / "web.txt", tmp_path / "other.txt"
    start_agent()
    config = await post_site_app(api, web_out)
    env = [{"name": "OUT", "value": str(other_out)}]
    other = {"name": "other", "type": "native", "selector": "site=x",
             "services": [{"name": "main", "command": [sys.executable, "-c", APP_NO_CONFIG],
                           "env": env}]}  # fmt: skip
    assert (await api.call("POST", "/apps", other))[0] == 201

    def pid_in(path: Path) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().partition(" ")[0])
        return None

    web = await until(lambda: asyncio.sleep(0, pid_in(web_out)), what="web to start")
    first_other = await until(lambda: asyncio.sleep(0, pid_in(other_out)), what="other to start")

    failing_specs.only, failing_specs.failing = "config/site", True
    config["data"] = {"msg.txt": "two"}
    assert (await api.call("PUT", "/configs/site", config))[0] == 200  # web: a new version
    await until(lambda: asyncio.sleep(0, failing_specs.failed >= 1), what="web's config to fail")
    env.append({"name": "ROUND", "value": "2"})
    assert (await api.call("PUT", "/apps/other", other))[0] == 200

    async def other_restarted() -> bool:
        return pid_in(other_out) not in (None, first_other)

    await until(other_restarted, what="other's new version to start while web waits")
    assert alive(web)
    assert web_out.read_text().endswith(" one")

    failing_specs.failing = False
    await until(lambda: asyncio.sleep(0, web_out.read_text().endswith(" two")), limit=40,
                what="web's new version once its config comes")  # fmt: skip

"""Node properties and offline detection end to end: the real cloud (broker, shadow, API) in the
test's loop, a real agent subprocess, programs on the node using the agent's local endpoint.

Properties desired through the API reach the node; the agent applies and reports its own
(``baetyl.keepalive``) and refuses an invalid one with its cause; what an app reports reaches
the cloud, also when it was reported offline and the agent was killed meanwhile; ``baetyl node
get`` shows desired beside reported. A closed socket and a DISCONNECT show the node offline in
under 2 s; a half-open link (the agent frozen) within ceil(1.5 x keepalive) s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from edge.properties import KEEPALIVE
from tests.edge.kube_standin import KubeStandIn
from tests.support.agent import Partition, point_agent_at
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until
from tests.support.up import BAETYL

NODE = "default.gw-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Local:
    """A program on the node calling the agent's local endpoint."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{port}/node/properties"

    async def get(self) -> Any:
        try:
            async with self.http.get(self.url) as answer:
                return await answer.json() if answer.status == 200 else None
        except aiohttp.ClientConnectionError:
            return None  # the agent is still starting

    async def patch(self, body: dict[str, Any]) -> Any:
        async with self.http.patch(self.url, json=body) as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()


async def cloud_properties(api: Api) -> dict[str, Any]:
    status, body = await api.call("GET", "/nodes/gw-1/properties")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


async def desire(api: Api, properties: dict[str, Any]) -> None:
    status, body = await api.call("PUT", "/nodes/gw-1/properties", {"desire": properties})
    assert status == 200, body


def online(cloud: RunningCloud) -> Callable[[], Any]:
    return lambda: asyncio.sleep(0, cloud.context.shadow.online(NODE))


def offline(cloud: RunningCloud) -> Callable[[], Any]:
    return lambda: asyncio.sleep(0, not cloud.context.shadow.online(NODE))


async def seconds_until_offline(cloud: RunningCloud, limit: float) -> float:
    """Seconds from now until the cloud shows the node offline (polled every 10 ms)."""
    started = time.monotonic()
    while cloud.context.shadow.online(NODE):
        if time.monotonic() - started > limit:
            raise AssertionError(f"the node still shows online after {limit} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_properties_go_both_ways_between_the_cloud_and_the_apps_on_the_node(
    cloud: RunningCloud,
    api: Api,
    start_agent: Callable[..., subprocess.Popen[str]],
) -> None:
    """Desired properties reach the node's apps; the agent reports the keepalive it applied and
    refuses an invalid one with its cause; an app's report (and its deletion) reaches the
    cloud; ``baetyl node get`` shows desired beside reported."""
    port = free_port()
    start_agent("--functions-port", str(port))
    async with aiohttp.ClientSession() as http:
        local = Local(http, port)
        await until(online(cloud), what="the node to be online")
        await desire(api, {"region": "eu", KEEPALIVE: 10})

        async def node_sees_desire() -> bool:
            view = await local.get()
            return bool(view and view["desire"] == {"region": "eu", KEEPALIVE: 10})

        await until(node_sees_desire, what="the desired properties on the node")

        async def reported(key: str, value: Any) -> bool:
            return bool((await cloud_properties(api))["report"].get(key, "absent") == value)

        await until(lambda: reported(KEEPALIVE, 10), what="the applied keepalive reported")

        view = await local.patch({"temp": 21.5, "fw": {"version": "1.2"}})
        assert view["report"] == {"temp": 21.5, "fw": {"version": "1.2"}, KEEPALIVE: 10}
        await until(lambda: reported("temp", 21.5), what="the app's report in the cloud")
        assert (await cloud_properties(api))["report"]["fw"] == {"version": "1.2"}
        await local.patch({"temp": None})
        await until(lambda: reported("temp", "absent"), what="the app's deletion in the cloud")

        await desire(api, {"region": "eu", KEEPALIVE: 3})

        async def refused() -> Any:
            return (await cloud_properties(api))["refused"].get(KEEPALIVE)

        cause = await until(refused, what="the invalid keepalive refused")
        assert "from 5 to 600 seconds, not 3" in cause
        assert (await cloud_properties(api))["report"][KEEPALIVE] == 10  # still in effect

    env = {**os.environ, "BAETYL_API_URL": cloud.api_url, "BAETYL_API_TOKEN": api.token}
    shown = await asyncio.to_thread(
        subprocess.run,
        [BAETYL, "node", "get", "gw-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.split("\n\n", 1)[1].splitlines()]
    assert rows[0] == ["PROPERTY", "DESIRED", "REPORTED"]
    assert ["baetyl.keepalive", "3", "10"] in rows
    assert ["fw", "<none>", '{"version":"1.2"}'] in rows
    assert ["region", '"eu"', "<none>"] in rows
    assert any(line.startswith("refused baetyl.keepalive: ") for line in shown.stdout.splitlines())


async def test_properties_reported_offline_reach_the_cloud_though_the_agent_was_killed(
    cloud: RunningCloud,
    api: Api,
    agent_dir: Path,
    start_agent: Callable[..., subprocess.Popen[str]],
) -> None:
    """Cut from the broker, an app reports; the agent is SIGKILLed (no chance to save its
    report queue) and started again; once the network is back the report reaches the cloud."""
    partition = Partition(cloud.mqtt_port)
    await partition.start()
    try:
        point_agent_at(agent_dir, partition.port)
        port = free_port()
        agent = start_agent("--functions-port", str(port))
        async with aiohttp.ClientSession() as http:
            local = Local(http, port)
            await until(online(cloud), what="the node to be online")
            await until(local.get, what="the local endpoint")
            await partition.cut()
            await until(offline(cloud), what="the cloud to see the node go")
            view = await local.patch({"temp": 7})
            assert view["report"]["temp"] == 7
            agent.kill()
            await asyncio.to_thread(agent.wait, 10)
            start_agent("--functions-port", str(port))
            again = await until(local.get, what="the restarted agent's local endpoint")
            assert again["report"]["temp"] == 7  # kept on the node
            await partition.start()

            async def arrived() -> bool:
                return bool((await cloud_properties(api))["report"].get("temp") == 7)

            await until(arrived, limit=40, what="the report made offline, in the cloud")
    finally:
        await partition.cut()
        await asyncio.sleep(0.1)  # let the relays see their sockets closed


async def test_a_closed_socket_or_a_disconnect_shows_the_node_offline_within_2_s(
    cloud: RunningCloud,
    start_agent: Callable[..., subprocess.Popen[str]],
) -> None:
    """SIGTERM (the agent says offline and sends DISCONNECT) and SIGKILL (the kernel closes
    the socket): either way the cloud shows the node offline in under 2 s."""
    for how in (signal.SIGTERM, signal.SIGKILL):
        agent = start_agent()
        await until(online(cloud), what="the node to be online")
        await asyncio.sleep(1.5)  # past the first reports: a connection in its steady state
        agent.send_signal(how)
        elapsed = await seconds_until_offline(cloud, limit=10)
        print(f"{how.name}: offline after {elapsed:.3f} s")
        assert elapsed < 2.0, f"{how.name}: offline after {elapsed:.2f} s"
        await asyncio.to_thread(agent.wait, 10)


async def test_a_frozen_agent_shows_offline_within_one_and_a_half_keepalives(
    cloud: RunningCloud,
    api: Api,
    start_agent: Callable[..., subprocess.Popen[str]],
) -> None:
    """The keepalive desired as a node property (5 s) is the one the broker enforces: an
    agent frozen by SIGSTOP (its socket open, silent: a half-open link) shows offline within
    ceil(1.5 x 5) = 8 s, not the 45 s of the default keepalive."""
    agent = start_agent()
    await until(online(cloud), what="the node to be online")
    await desire(api, {KEEPALIVE: 5})

    async def applied() -> bool:
        report = (await cloud_properties(api))["report"]
        return bool(report.get(KEEPALIVE) == 5 and cloud.context.shadow.online(NODE))

    # Reported over the connection made with it: from now on the broker expects 5 s.
    await until(applied, what="the agent to reconnect with a keepalive of 5 s")
    agent.send_signal(signal.SIGSTOP)
    try:
        elapsed = await seconds_until_offline(cloud, limit=20)
    finally:
        agent.send_signal(signal.SIGCONT)
    print(f"SIGSTOP with a keepalive of 5 s: offline after {elapsed:.3f} s")
    # Silent since its last packet (at most a keepalive before the freeze) for 8 s.
    assert 8 - 5 <= elapsed <= 8 + 1.5, f"offline after {elapsed:.2f} s"


async def test_apps_report_properties_on_the_kube_engine_too(
    cloud: RunningCloud,
    api: Api,
    start_agent: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """The kube engine has no function apps on the node, but the local endpoint serves the
    node's properties all the same (a function call there is 404)."""
    async with KubeStandIn() as standin:
        kubeconfig = standin.write_kubeconfig(tmp_path / "kubeconfig")
        port = free_port()
        start_agent("--engine", "kube", "--functions-port", str(port),
                    env={"KUBECONFIG": str(kubeconfig)})  # fmt: skip
        async with aiohttp.ClientSession() as http:
            local = Local(http, port)
            await until(local.get, what="the local endpoint")
            await local.patch({"gpu": "ok"})

            async def arrived() -> bool:
                return bool((await cloud_properties(api))["report"].get("gpu") == "ok")

            await until(arrived, what="the report in the cloud")
            async with http.post(f"http://127.0.0.1:{port}/web/hello", data=b"{}") as answer:
                assert answer.status == 404
                assert (await answer.json())["code"] == "UnknownFunction"

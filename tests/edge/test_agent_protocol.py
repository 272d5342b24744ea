"""The agent's side of the protocol, message by message: what it asks again, and when.

The agent is real (its state directory, its native engine); only what it publishes is caught
instead of going to a broker, and its clock is moved instead of waited for. The end-to-end runs
are in ``test_agent_e2e.py``; these are the cases a broker cannot easily be made to produce.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from certs import CertificateAuthority
from edge.agent import Agent, AgentConfig
from edge.desireget import ANSWER_TIMEOUT
from edge.engines.kube import KubeEngine
from edge.engines.native import NativeEngine
from edge.specbook import SpecRef
from shadow import Channel, Encoding, encode
from tests.broker.helpers import issue_node
from tests.edge.kube_standin import KubeStandIn

NODE = "default.gw"


class Clock:
    """time.monotonic for the agent, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, agent: Agent, clock: Clock) -> None:
        self.agent = agent
        self.clock = clock
        self.sent: list[tuple[Channel, dict[str, Any]]] = []

    def gets(self) -> list[str]:
        """The tokens of the desire/get requests sent so far."""
        return [str(body["clientToken"]) for ch, body in self.sent if ch is Channel.DESIRE_GET]

    async def receive(self, channel: Channel, body: dict[str, Any]) -> None:
        payload = encode(body, Encoding.JSON)
        await self.agent._handle(f"$baetyl/node/{NODE}/{channel.value}", payload)

    async def desire(self, version: int, props: dict[str, Any], token: str | None = None) -> None:
        body: dict[str, Any] = {
            "version": version,
            "desired": {"apps": [], "nodeprops": props},
            "timestamp": 1,
        }
        if token is not None:
            body["clientToken"] = token
        await self.receive(Channel.DESIRE, body)


def _state_dir(tmp_path: Path) -> Path:
    """An activated node's state directory (the node's certificate and key, the CA, node.json)."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    creds = issue_node(ca, tmp_path / "issued", "default", "gw")
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(creds.cert, state / "node.crt")
    shutil.copy(creds.key, state / "node.key")
    shutil.copy(ca.ca_path, state / "ca.crt")
    node = {"nodeId": NODE, "broker": {"host": "127.0.0.1", "port": 1}, "activationId": "a1"}
    (state / "node.json").write_text(json.dumps(node))
    return state


def _harness(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Harness:
    clock = Clock()
    # The agent's module sees this clock; asyncio and the engine keep the real one.
    monkeypatch.setattr("edge.agent.time", types.SimpleNamespace(monotonic=clock))
    harness = Harness(agent, clock)
    monkeypatch.setattr(agent.link, "publish", lambda ch, body: harness.sent.append((ch, body)))
    agent.link.connected.set()  # as on a connection: asks for the desired state
    agent._online()
    return harness


@pytest.fixture
async def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """The agent on the native engine."""
    async with NativeEngine(tmp_path / "native") as engine:
        yield _harness(Agent(AgentConfig(_state_dir(tmp_path)), engine), monkeypatch)


async def test_an_unanswered_desire_get_is_sent_again(harness: Harness) -> None:
    """No answer within the timeout (30 to 45 s, jittered): asked again, with a new token, then
    after twice as long; an answer ends it."""
    assert len(harness.gets()) == 1
    harness.clock.now += ANSWER_TIMEOUT - 1
    await harness.agent._step()
    assert len(harness.gets()) == 1
    harness.clock.now += ANSWER_TIMEOUT * 0.5 + 2
    await harness.agent._step()
    first, second = harness.gets()
    harness.clock.now += 2 * ANSWER_TIMEOUT - 1
    await harness.agent._step()
    assert len(harness.gets()) == 2  # the second wait is 60 to 90 s
    assert first != second
    await harness.desire(3, {"a": "1"}, token=second)
    harness.clock.now += 10 * ANSWER_TIMEOUT
    await harness.agent._step()
    assert len(harness.gets()) == 2
    assert harness.agent.state.follower.version == 3


async def test_a_refused_desire_get_is_sent_again_after_a_back_off(harness: Harness) -> None:
    """A 500 (the store away; no token, as the cloud cannot always read one) or a 429: asked
    again within 5 to 7.5 s, not at once and not only after the answer timeout."""
    await harness.receive(Channel.DESIRE_REJECTED, {"code": 500, "message": "x", "timestamp": 1})
    await harness.agent._step()
    assert len(harness.gets()) == 1
    harness.clock.now += 7.6
    await harness.agent._step()
    assert len(harness.gets()) == 2
    # The second refusal waits longer: 10 to 15 s.
    await harness.receive(Channel.DESIRE_REJECTED, {"code": 429, "message": "x", "timestamp": 1})
    harness.clock.now += 9.9
    await harness.agent._step()
    assert len(harness.gets()) == 2
    harness.clock.now += 5.2
    await harness.agent._step()
    assert len(harness.gets()) == 3


async def test_stale_pushes_are_ignored_but_an_older_answer_to_our_get_is_followed(
    harness: Harness,
) -> None:
    """A push at or below the applied version is stale; the answer to the agent's own get,
    older than what the agent had when it asked, means the cloud's store went back."""
    (token,) = harness.gets()
    await harness.desire(9, {"round": "9"})  # a push
    await harness.desire(8, {"round": "8"})  # a redelivery of an older one: ignored
    assert harness.agent.state.desired["nodeprops"] == {"round": "9"}
    # The get crossed the push (asked at version 0): its answer, at 8, is stale, not a reset.
    await harness.desire(8, {"round": "8"}, token=token)
    assert (harness.agent.state.follower.version, harness.agent.state.desired["nodeprops"]) == (
        9,
        {"round": "9"},
    )
    harness.agent._online()  # a reconnect, asking at version 9
    await harness.desire(2, {"round": "restored"}, token=harness.gets()[-1])
    assert harness.agent.state.follower.version == 2
    assert harness.agent.state.desired["nodeprops"] == {"round": "restored"}
    await harness.desire(3, {"round": "next"})  # and the pushes after it
    assert harness.agent.state.desired["nodeprops"] == {"round": "next"}


async def test_a_state_file_that_cannot_be_written_does_not_stop_the_agent(
    harness: Harness,
) -> None:
    """A full disk, say: the desired state is taken and applied from memory, and written once
    the disk is back."""
    blocker = harness.agent.config.state_dir / "agent.tmp"
    blocker.mkdir()  # where the agent writes its next state file: it cannot
    await harness.desire(4, {"a": "4"}, token=harness.gets()[-1])
    assert harness.agent.state.desired["nodeprops"] == {"a": "4"}
    assert not (harness.agent.config.state_dir / "agent.json").exists()
    blocker.rmdir()
    await harness.desire(5, {"a": "5"})
    saved = json.loads((harness.agent.config.state_dir / "agent.json").read_text())
    assert (saved["version"], saved["desired"]["nodeprops"]) == (5, {"a": "5"})


async def test_a_failed_apply_waits_for_the_resync_while_a_spec_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kube engine against a stand-in API server whose namespace reads all fail: app a is
    complete, b lacks its spec. The apply of a fails once; the loop, asking for b's spec every
    turn, does not apply again until the resync."""
    async with KubeStandIn() as standin:
        standin.fail("GET", "/api/v1/namespaces/baetyl-edge", times=10**6)
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=standin.host))
        engine = KubeEngine("baetyl-edge", api_client=client, backoff=0.01, poll_interval=60.0)
        try:
            async with engine:
                agent = Agent(AgentConfig(_state_dir(tmp_path), resync_interval=60.0), engine)
                harness = _harness(agent, monkeypatch)
                spec = {"services": [{"name": "main", "image": "nginx:1.27"}]}
                agent.state.specs.put(SpecRef.app("a", "1"), spec)
                apps = [{"name": "a", "version": "1"}, {"name": "b", "version": "1"}]
                body = {"version": 1, "desired": {"apps": apps}, "timestamp": 1}
                await harness.receive(Channel.DESIRE, body)

                def reads() -> int:
                    return standin.requests.count(("GET", "/api/v1/namespaces/baetyl-edge"))

                once = reads()
                assert once == 4  # the engine's call and its 3 retries
                for _ in range(10):
                    harness.clock.now += 1
                    await agent._step()
                assert reads() == once
                harness.clock.now += 60
                await agent._step()
                assert reads() == 2 * once
        finally:
            client.close()  # type: ignore[no-untyped-call]


async def test_an_agent_not_entered_does_not_run(harness: Harness) -> None:
    """``run`` before ``async with agent`` would loop with no session: it says what to do."""
    with pytest.raises(RuntimeError, match="async with agent"):
        await harness.agent.run(asyncio.Event())

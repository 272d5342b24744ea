"""MQTT nodes against the running cloud, and the API calls the matching tests make with them.

A ``Node`` is a paho client with a certificate from the cloud's CA, subscribed at QoS 1 to its
own ``desire``, ``resource`` and ``resource/rejected`` as PROTOCOL.md tells a node to; the
``connect_node`` fixture (tests/management/conftest.py) makes them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.broker.clients import MqttClient
from tests.support.cloud import Api

QUIET = 0.4  # seconds of silence that show nothing was pushed
SERVICES = [{"name": "web", "image": "nginx:1.27"}]


@dataclass
class Node:
    """A node's MQTT client, subscribed to its own downstream topics."""

    namespace: str
    name: str
    client: MqttClient

    @property
    def node_id(self) -> str:
        return f"{self.namespace}.{self.name}"

    def topic(self, suffix: str) -> str:
        return f"$baetyl/node/{self.node_id}/{suffix}"

    async def desire(self) -> dict[str, Any]:
        """The desired state of the next ``desire`` push (waiting a few seconds at most)."""
        message = await asyncio.to_thread(self.client.receive_on, self.topic("desire"))
        assert message.qos == 1
        envelope = json.loads(message.payload)
        assert "clientToken" not in envelope  # a push, not an answer
        state: dict[str, Any] = envelope["desired"]
        return state

    async def apps(self) -> list[dict[str, str]]:
        """The apps of the next ``desire`` push."""
        apps: list[dict[str, str]] = (await self.desire())["apps"]
        return apps

    async def nothing(self) -> None:
        """Nothing arrives for a while."""
        received = await asyncio.to_thread(self.client.drain, QUIET)
        assert received == [], f"{self.node_id} got {received}"

    async def fetch(self, kind: str, name: str, version: str) -> tuple[str, dict[str, Any]]:
        """Ask for a spec with ``resource/get``; ``(channel answered on, payload)``."""
        request = {"clientToken": "res-1", "kind": kind, "name": name, "version": version}
        await asyncio.to_thread(
            self.client.publish, self.topic("resource/get"), json.dumps(request).encode(), 1
        )
        message = await asyncio.to_thread(self.client.receive)
        assert message.topic in (self.topic("resource"), self.topic("resource/rejected"))
        payload: dict[str, Any] = json.loads(message.payload)
        assert payload["clientToken"] == "res-1"
        return message.topic.removeprefix(self.topic("")), payload

    async def spec(self, kind: str, name: str, version: str) -> dict[str, Any]:
        """The spec the cloud answers with (it must answer on ``resource``)."""
        channel, payload = await self.fetch(kind, name, version)
        assert channel == "resource", payload
        assert (payload["kind"], payload["name"], payload["version"]) == (kind, name, version)
        spec: dict[str, Any] = payload["spec"]
        return spec

    async def refused(self, kind: str, name: str, version: str) -> None:
        """The cloud answers 404 on ``resource/rejected``."""
        channel, payload = await self.fetch(kind, name, version)
        assert channel == "resource/rejected", payload
        assert payload["code"] == 404, payload
        assert "spec" not in payload


ConnectNode = Callable[..., Awaitable[Node]]


async def create(api: Api, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a resource; insist on 201."""
    status, answer = await api.call("POST", f"/{collection}", body)
    assert status == 201, answer
    created: dict[str, Any] = answer
    return created


async def update(api: Api, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    """PUT a resource; insist on 200."""
    status, answer = await api.call("PUT", f"/{collection}/{body['name']}", body)
    assert status == 200, answer
    updated: dict[str, Any] = answer
    return updated


async def node_at(api: Api, connect: ConnectNode, name: str, **labels: str) -> Node:
    """Create node ``name`` with ``labels`` in the API, then connect it."""
    await create(api, "nodes", {"name": name, "labels": labels})
    return await connect(name, api.namespace)


def app(name: str, selector: str, *volumes: dict[str, Any]) -> dict[str, Any]:
    """An app body running nginx on the nodes ``selector`` matches."""
    body: dict[str, Any] = {"name": name, "selector": selector, "services": SERVICES}
    if volumes:
        body["volumes"] = list(volumes)
    return body


def ref(name: str, version: int | str) -> dict[str, str]:
    return {"name": name, "version": str(version)}

"""The management tests' own fixture: MQTT nodes connected to the running cloud.

The cloud itself (``cloud``, ``api``, ``api_for``, ``database``) comes from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.broker.clients import MqttClient
from tests.broker.helpers import issue_node
from tests.management.nodes import ConnectNode, Node
from tests.support.cloud import RunningCloud


@pytest.fixture
async def connect_node(cloud: RunningCloud, tmp_path: Path) -> AsyncIterator[ConnectNode]:
    """Connect a node (``namespace`` default) with a certificate issued by the cloud's CA."""
    nodes: list[Node] = []

    async def connect(name: str, namespace: str = "default") -> Node:
        creds = await asyncio.to_thread(issue_node, cloud.ca, tmp_path / "clients", namespace, name)
        client = MqttClient(cloud.mqtt_port, creds.client_id, ca=cloud.ca.ca_path, creds=creds)
        node = Node(namespace, name, client)
        nodes.append(node)
        await asyncio.to_thread(client.connect)
        for suffix in ("desire", "resource", "resource/rejected"):
            assert await asyncio.to_thread(client.subscribe, node.topic(suffix), 1) == [1]
        return node

    yield connect
    for node in nodes:
        await asyncio.to_thread(node.client.close)

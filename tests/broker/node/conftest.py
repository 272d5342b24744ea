"""Node broker fixtures: one PKI (cloud CA, device CA) per session, a broker process per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker.node.helpers import NodeBrokerProcess, NodePki


@pytest.fixture(scope="session")
def node_pki(tmp_path_factory: pytest.TempPathFactory) -> NodePki:
    return NodePki.build(tmp_path_factory.mktemp("node-pki"))


@pytest.fixture
def start_node_broker(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], NodeBrokerProcess]]:
    running: list[NodeBrokerProcess] = []

    def start(config: dict[str, Any]) -> NodeBrokerProcess:
        process = NodeBrokerProcess(tmp_path, config)
        running.append(process)
        return process.started()

    yield start
    for process in running:
        process.stop()

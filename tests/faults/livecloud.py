"""A running ``baetyl up`` for the outage and hostile-input tests, driven synchronously.

:class:`LiveCloud` is ``tests.faults.cloud.Up`` plus what these tests need around it: the CA
made by ``baetyl certs init``, node certificates issued from it (as activation would), an API
token made by ``baetyl tokens create``, HTTP calls with that token, the stored shadows read
around the cloud (the database is the ground truth), and paho node clients over mTLS.

    with LiveCloud(tmp_path, db_url, query, nodes=["gw-1"]) as cloud:
        status, body, headers = cloud.call("POST", "/configs", {"name": "c", "data": {}})
        node = cloud.node("gw-1")        # connected, subscribed to its answer topics
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

from certs import CertificateAuthority
from tests.broker.clients import MqttClient
from tests.broker.helpers import Creds, issue_node
from tests.faults.cloud import StoredShadow, Up

__all__ = ["NAMESPACE", "Answer", "LiveCloud", "Query", "StoredShadow", "node_id", "sqlite_query"]

NAMESPACE = "default"
# The answer topics a node subscribes to (PROTOCOL.md, "After every (re)connect"), without
# overlaps: ``report/+`` and ``+/rejected`` would deliver every report/rejected twice.
ANSWER_FILTERS = ("desire", "delta", "report/accepted", "resource", "+/rejected")

# Runs one SELECT (``%s`` marks parameters) against the cloud's database; its rows.
Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


def sqlite_query(path: Path) -> Query:
    """A ``Query`` on the SQLite file at ``path`` (read-only; WAL lets it read beside the cloud)."""

    def run(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [tuple(row) for row in conn.execute(sql.replace("%s", "?"), params)]
        finally:
            conn.close()

    return run


def node_id(name: str) -> str:
    return f"{NAMESPACE}.{name}"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: status, JSON body (None if empty or not JSON) and headers."""

    status: int
    body: Any
    headers: dict[str, str]


class LiveCloud:
    """See the module docstring; a context manager that stops everything it started."""

    def __init__(
        self, workdir: Path, db_url: str, query: Query, *settings: str, nodes: Iterable[str] = ()
    ) -> None:
        self.workdir = workdir
        self.query = query
        self.up = Up(workdir, db_url, *settings)
        self.names = list(nodes)
        self.creds: dict[str, Creds] = {}
        self.ca_file = workdir / "baetyl-data" / "ca" / "ca.crt"
        self.token = ""
        self.http = requests.Session()
        self._clients: list[MqttClient] = []

    def __enter__(self) -> Self:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.up.run("certs", "init")
            ca = CertificateAuthority.load(self.workdir / "baetyl-data" / "ca")
            for name in self.names:
                self.add_node(name, ca)
            self.token = self.up.run("tokens", "create", "--name", "faults").split()[-1]
            self.http.headers["Authorization"] = f"Bearer {self.token}"
            asyncio.run(self.up.start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.http.close()
        self.up.stop()

    def add_node(self, name: str, ca: CertificateAuthority | None = None) -> Creds:
        """A certificate for node ``name`` issued from a CSR by the cloud's CA."""
        ca = ca or CertificateAuthority.load(self.workdir / "baetyl-data" / "ca")
        self.creds[name] = issue_node(ca, self.workdir / "nodes", NAMESPACE, name)
        return self.creds[name]

    # -- the process and its ports -------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.up.running

    @property
    def mqtt_port(self) -> int:
        return self.up.ports["mqtts"]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.up.ports['api']}"

    # -- HTTP ----------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request to ``/v1<path>`` (or to ``path`` itself if it does not start with /v1)."""
        url = self.api_url + (path if path.startswith("/readyz") or path.startswith("/healthz")
                              else "/v1" + path)  # fmt: skip
        response = self.http.request(
            method,
            url,
            json=body if data is None else None,
            data=data,
            headers=headers,
            timeout=30,
        )
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            parsed = None
        return Answer(response.status_code, parsed, dict(response.headers))

    def ready(self) -> int:
        """The status of ``/readyz``."""
        return self.call("GET", "/readyz").status

    # -- MQTT ----------------------------------------------------------------------------------

    def node(self, name: str, *, subscribe: bool = True) -> MqttClient:
        """Node ``name`` connected over mTLS (closed with the cloud), subscribed to its answers."""
        client = MqttClient(self.mqtt_port, node_id(name), ca=self.ca_file, creds=self.creds[name])
        self._clients.append(client)
        client.connect()
        if subscribe:
            for suffix in ANSWER_FILTERS:
                assert client.subscribe(f"$baetyl/node/{node_id(name)}/{suffix}", qos=1) == [1]
        return client

    # -- the store -----------------------------------------------------------------------------

    def stored(self, name: str) -> StoredShadow | None:
        """Node ``name``'s shadow as committed in the database, read around the cloud."""
        rows = self.query(
            "SELECT desired_version, desired, reported_version, reported FROM shadows "
            "WHERE node_id = %s",
            (node_id(name),),
        )
        if not rows:
            return None
        dv, desired, rv, reported = rows[0]
        return StoredShadow(int(dv), json.loads(desired), int(rv), json.loads(reported))

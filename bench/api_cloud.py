"""The shadow benchmark's cloud driven through the management API: ``baetyl up``, whole.

``bench.shadow_fleet --via api`` uses this instead of ``bench.shadow_server``: the real cloud
(`baetyl up`: embedded broker, shadow service, management API, matcher) in a subprocess, on the
bench PKI's CA, and every desired write made the way an operator makes it: one
``POST /v1/apps`` whose selector matches every node, which the matcher turns into one desired
write per node. The time measured runs from the start of that request to the last node holding
a desire that names the new app.

Setup, before the fleet connects: a fresh work directory whose data directory has the bench
PKI's ``ca/`` and ``server/`` (copied: the cloud adds its own certificates to the CA's journal),
an API token for the namespace ``bench`` (``baetyl tokens create``), and every node
``n<i>`` created through ``POST /v1/nodes`` with the label ``fleet=bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path
from typing import Any, Self

import aiohttp

from bench.pki import NAMESPACE, FleetPKI
from tests.faults.cloud import Rest, Up

__all__ = ["ApiCloud"]

SELECTOR = "fleet=bench"
CREATE_CONCURRENCY = 32


class ApiCloud:
    """``baetyl up`` for the shadow benchmark, with the interface of ``shadow_fleet.Server``."""

    def __init__(self, up: Up, workdir: Path) -> None:
        self.up = up
        self.workdir = workdir
        self.port = 0
        self._session: aiohttp.ClientSession | None = None
        self._rest: Rest | None = None

    @property
    def pid(self) -> int:
        assert self.up.proc is not None
        return self.up.proc.pid

    @property
    def rest(self) -> Rest:
        assert self._rest is not None
        return self._rest

    def alive(self) -> bool:
        return self.up.running

    @classmethod
    async def start(cls, db_url: str, args: argparse.Namespace, log_path: Path) -> Self:
        workdir = log_path.with_suffix("")
        if workdir.exists():
            shutil.rmtree(workdir)
        data = workdir / "baetyl-data"
        data.mkdir(parents=True)
        pki = FleetPKI(Path(args.pki_dir))
        shutil.copytree(pki.ca_dir, data / "ca")
        shutil.copytree(pki.server_cert.parent, data / "server")
        up = Up(
            workdir,
            db_url,
            "--set", f"shadow.report_rate={args.report_rate}",
            "--set", f"shadow.report_burst={args.report_burst}",
            "--set", "broker.max_connections=19000",
            log_level="warning",
        )  # fmt: skip
        cloud = cls(up, workdir)
        token = await asyncio.to_thread(
            up.run, "tokens", "create", "--namespace", NAMESPACE, "--name", "bench"
        )
        ports = await up.start()
        cloud.port = ports["mqtts"]
        cloud._session = aiohttp.ClientSession()
        cloud._rest = Rest(
            cloud._session, f"http://127.0.0.1:{ports['api']}", token.strip().splitlines()[-1]
        )
        return cloud

    async def prepare(self, n: int) -> dict[str, Any]:
        """Create nodes n0..n<n-1> through the API; how long it took."""
        started = time.monotonic()
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create(index: int) -> None:
            async with gate:
                await self.rest.ok(
                    "POST", "/nodes", {"name": f"n{index}", "labels": {"fleet": "bench"}}
                )

        await asyncio.gather(*(create(i) for i in range(n)))
        seconds = time.monotonic() - started
        return {"created": n, "seconds": round(seconds, 2), "per_s": round(n / seconds, 1)}

    async def desire(self, n: int, tag: str) -> dict[str, Any]:
        """One ``POST /v1/apps`` whose selector matches all ``n`` nodes; the app's name has
        ``tag``, so every node's next desire carries it."""
        body = {
            "name": f"b-{tag}",
            "type": "native",
            "selector": SELECTOR,
            "services": [{"name": "main", "command": ["/bin/true"]}],
        }
        started = time.time()
        status, answer = await self.rest.call("POST", "/apps", body)
        returned = time.time()
        refused = 0 if status == 201 else n
        return {
            "cmd": "desire",
            "writes": n,
            "start": started,
            "end": returned,
            "refused": refused,
            "first_error": None if status == 201 else f"{status} {answer}",
        }

    async def queue(self) -> int | None:
        """The service's queue is not visible through the API."""
        return None

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.to_thread(self.up.stop)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"up-{self.up.starts}.err").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

"""The load generator's worker processes, driven from the main process's event loop."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench.loadgen import WorkerSpec, worker_main

__all__ = ["Fleet", "FleetTimeout"]


class FleetTimeout(Exception):
    """A worker did not answer a command in time."""


class Fleet:
    """N simulated nodes split over worker processes, each with its own event loop."""

    def __init__(
        self,
        pki_root: Path,
        nodes: int,
        workers: int,
        concurrency: int,
        *,
        subscribe: tuple[str, ...] = (),
    ) -> None:
        self.pki_root = pki_root
        self.subscribe = subscribe  # more filters per node at connect (see WorkerSpec)
        self.nodes = nodes
        self.workers = max(1, min(workers, nodes))
        self.concurrency = max(1, math.ceil(concurrency / self.workers))
        self.processes: list[BaseProcess] = []
        self.pipes: list[Connection] = []
        self.inboxes: list[asyncio.Queue[Any]] = []

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        per = math.ceil(self.nodes / self.workers)
        for w in range(self.workers):
            first = w * per
            count = min(per, self.nodes - first)
            if count <= 0:
                break
            parent, child = ctx.Pipe()
            spec = WorkerSpec(
                self.pki_root, first, count, self.concurrency, subscribe=self.subscribe
            )
            process = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
            process.start()
            child.close()
            inbox: asyncio.Queue[Any] = asyncio.Queue()
            loop.add_reader(parent.fileno(), self._reader(parent, inbox))
            self.processes.append(process)
            self.pipes.append(parent)
            self.inboxes.append(inbox)

    @staticmethod
    def _reader(conn: Connection, inbox: asyncio.Queue[Any]) -> Any:
        def read() -> None:
            try:
                while conn.poll():
                    inbox.put_nowait(conn.recv())
            except (EOFError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
                inbox.put_nowait(("dead",))

        return read

    def send(self, *command: Any) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    async def replies(self, limit: float) -> list[Any]:
        """One reply from every worker within `limit` seconds, or FleetTimeout."""
        try:
            async with asyncio.timeout(limit):
                out = [await inbox.get() for inbox in self.inboxes]
        except TimeoutError:
            raise FleetTimeout(f"workers did not answer within {limit:.0f} s") from None
        if any(reply[0] == "dead" for reply in out):
            raise FleetTimeout("a worker process died")
        return out

    async def command(self, *command: Any, limit: float) -> list[Any]:
        self.send(*command)
        return await self.replies(limit)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for pipe in self.pipes:
            try:
                loop.remove_reader(pipe.fileno())
                pipe.send(("exit",))
            except (OSError, ValueError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()
        self.processes, self.pipes, self.inboxes = [], [], []

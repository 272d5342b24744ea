"""A fleet of simulated nodes (``simnode.SimNode``) in the test's event loop, and its books.

Certificates come from the cloud's own CA in its data directory, issued from each node's CSR
as activation would (the node must also exist in the API for desired writes to reach it). The
fleet runs every node as one task, paces only the very first connects, and checks on every
wait that no node task died (a node raising is a bug in the test or in what the cloud sent).
"""

from __future__ import annotations

import asyncio
import collections
import random
import ssl
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from certs import CertificateAuthority, Identity, build_csr, generate_private_key
from certs.keys import private_key_pem, write_private_file
from tests.faults.simnode import SimNode, Target
from tests.support.polling import until

__all__ = ["Fleet", "issue_nodes", "percentile", "summary"]


def issue_nodes(ca_dir: Path, out_dir: Path, namespace: str, names: Iterable[str]) -> None:
    """A key (made here) and a certificate issued from its CSR for each node, as ``<name>.pem``."""
    ca = CertificateAuthority.load(ca_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out_dir / f"{name}.pem"
        if path.exists():
            continue
        key = generate_private_key()
        issued = ca.issue_from_csr(build_csr(key), Identity.node(namespace, name))
        write_private_file(path, private_key_pem(key) + issued.certificate_pem)


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of ``values`` (nearest rank), None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _context(ca_file: Path, pem: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.load_cert_chain(pem)
    return context


class Fleet:
    """Simulated nodes ``<namespace>.<name>`` for each name, with their certificates in ``pki``."""

    def __init__(
        self,
        namespace: str,
        names: list[str],
        pki: Path,
        ca_file: Path,
        target: Target,
        *,
        seed: int,
        first_connects: int = 32,
        reconnect: str = "agent",
    ) -> None:
        self.namespace = namespace
        self.names = names
        self.pki = pki
        self.ca_file = ca_file
        self.target = target
        self.reconnect = reconnect
        self.rng = random.Random(seed)  # noqa: S311 # load shapes, not secrets
        self.nodes: dict[str, SimNode] = {}
        self._stop = asyncio.Event()
        self._first = asyncio.Semaphore(first_connects)
        self._tasks: list[asyncio.Task[None]] = []

    def node(self, name: str) -> SimNode:
        return self.nodes[f"{self.namespace}.{name}"]

    async def start(self) -> None:
        """Load every node's certificate and start its task (the connects are paced)."""

        def contexts() -> list[ssl.SSLContext]:
            return [_context(self.ca_file, self.pki / f"{name}.pem") for name in self.names]

        for name, context in zip(self.names, await asyncio.to_thread(contexts), strict=True):
            node_id = f"{self.namespace}.{name}"
            rng = random.Random(self.rng.random())  # noqa: S311
            node = SimNode(node_id, context, rng, self.reconnect)
            self.nodes[node_id] = node
        self._tasks = [
            asyncio.create_task(node.run(self.target, self._stop, self._first), name=node.node_id)
            for node in self.nodes.values()
        ]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="fleet-housekeeping"))

    async def stop(self) -> None:
        """Stop every node and close its connection (15 s at most, then cancel)."""
        self._stop.set()
        for node in self.nodes.values():
            node.drop()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _housekeeping(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for node in self.nodes.values():
                node.tick(now)
            await asyncio.sleep(0.5)

    def check_alive(self) -> None:
        """Raise the error of a node task that died."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"node task {task.get_name()} died") from task.exception()

    async def wait_until(
        self, check: Callable[[], bool], limit: float, what: str, *, every: float = 0.1
    ) -> float:
        """``until`` (tests/support/polling.py) that also fails as soon as a node task died; the
        seconds it took (a scenario's figure)."""

        def holds() -> bool:
            self.check_alive()
            return check()

        started = time.monotonic()
        await until(holds, limit, what, every=every)
        return time.monotonic() - started

    # -- views -----------------------------------------------------------------------------------

    def online(self) -> int:
        return sum(1 for node in self.nodes.values() if node.online)

    def all_idle(self, nodes: Iterable[SimNode] | None = None) -> bool:
        return all(node.idle for node in (self.nodes.values() if nodes is None else nodes))

    def drop(self, nodes: Iterable[SimNode]) -> int:
        """Cut these nodes' connections at once; how many were up."""
        count = 0
        for node in nodes:
            if node.online:
                node.drop()
                count += 1
        return count

    def pick(self, count: int) -> list[SimNode]:
        """``count`` random nodes that are online now."""
        online = [node for node in self.nodes.values() if node.online]
        return self.rng.sample(online, min(count, len(online)))

    def totals(self) -> dict[str, Any]:
        """The nodes' books, summed."""
        books = [node.book for node in self.nodes.values()]
        rejected: collections.Counter[int] = collections.Counter()
        for book in books:
            rejected.update(book.rejected)
        fields = ("connects", "connect_failures", "sessions_lost", "gets_sent", "gets_answered",
                  "desires_applied", "desires_ignored", "reports_sent", "accepted",
                  "late_answers", "unknown_answers", "malformed")  # fmt: skip
        out: dict[str, Any] = {name: sum(getattr(book, name) for book in books) for name in fields}
        out["overdue"] = sum(len(book.overdue) for book in books)
        out["rejected"] = {str(code): count for code, count in sorted(rejected.items())}
        return out


def summary(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` in seconds, rounded to milliseconds."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "p50": rounded(percentile(values, 0.5)),
        "p99": rounded(percentile(values, 0.99)),
        "max": rounded(max(values) if values else None),
        "mean": rounded(statistics.fmean(values) if values else None),
    }

"""How fast the agent's Router drains a backlog: a spool of queued rows sent up to the cloud broker.

    .venv/bin/python -m bench.route_drain [--rows 100000] [--payload 64] [--window 2000]

The scenario of issue 15's "after an outage, 100,000 queued messages drained": the spool is
pre-filled with ``--rows`` rows (as the node broker writes them: WAL, one transaction), one route
(``devices/+/telemetry`` → cloud ``telemetry/{device}``, QoS 1) starts at the beginning, and the
Router (``edge.dataplane.router``) sends them through ``PahoPublisher`` over a paho client with a
node certificate to the embedded cloud broker, which runs in a process of its own on loopback
(its ACL checks every publish). Timed from the route's start to its cursor at the last row, i.e.
every message acknowledged by the broker (PUBACK) and the cursor persisted; rows deleted behind
it as it goes. Prints msg/s and the agent process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import resource
import sqlite3
import ssl
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.pki import ensure_pki, node_id
from broker import BrokerSettings, EmbeddedBroker, TLSFiles
from edge.dataplane.publisher import PahoPublisher, prepare_client
from edge.dataplane.router import Router
from edge.dataplane.routes import RouteSpec
from edge.dataplane.spool import SCHEMA

ROUTE = {"name": "drain", "source": {"local": "devices/+/telemetry"},
         "target": {"cloud": "telemetry/{device}"}, "qos": 1}  # fmt: skip


def _broker(files: TLSFiles, conn: Connection) -> None:
    async def serve() -> None:
        async with EmbeddedBroker(BrokerSettings(host="127.0.0.1", port=0), files) as broker:
            conn.send(broker.ports["mqtts"])
            await asyncio.to_thread(conn.recv)  # until told to stop

    asyncio.run(serve())


def _fill(path: Path, rows: int, payload: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(SCHEMA)
    db.execute("PRAGMA user_version = 1")
    body = b"x" * payload
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO messages (ts, topic, device, qos, payload) VALUES (?, ?, ?, 1, ?)",
        ((time.time(), f"devices/d{n % 10}/telemetry", f"d{n % 10}", body) for n in range(rows)),
    )
    # The route's cursor before the first row: the backlog is its own (an outage's queue).
    db.execute("INSERT INTO cursors (route, last_id) VALUES ('drain', 0)")
    db.execute("COMMIT")
    db.close()


async def _drain(port: int, pki_root: Path, spool: Path, rows: int, window: int) -> float:
    pki = ensure_pki(pki_root, 1, log=False)
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_cert_chain(str(pki.node_file(0)))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node_id(0), protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    prepare_client(client)
    connected = asyncio.Event()
    loop = asyncio.get_running_loop()
    client.on_connect = lambda *_a: loop.call_soon_threadsafe(connected.set)
    client.connect("127.0.0.1", port)
    client.loop_start()
    await asyncio.wait_for(connected.wait(), 10)
    router = Router(node_id=node_id(0), node_name="n0", spool_path=spool, function_url=None,
                    window=window)  # fmt: skip
    router.set_routes([RouteSpec.parse(ROUTE)])
    started = time.perf_counter()
    router.set_cloud(PahoPublisher(client))
    task = asyncio.create_task(router.run())
    db = sqlite3.connect(spool)
    try:
        while True:
            row = db.execute("SELECT last_id FROM cursors WHERE route = 'drain'").fetchone()
            if row is not None and row[0] >= rows:
                break
            await asyncio.sleep(0.02)
        return time.perf_counter() - started
    finally:
        db.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--payload", type=int, default=64, help="bytes per message")
    parser.add_argument("--window", type=int, default=2000, help="publishes in flight")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="route-drain-") as tmp:
        root = Path(tmp)
        pki = ensure_pki(root / "pki", 1, log=False)
        files = TLSFiles(ca=pki.ca_file, cert=pki.server_cert, key=pki.server_key,
                         crl=pki.crl_file)  # fmt: skip
        spool = root / "spool.db"
        _fill(spool, args.rows, args.payload)
        parent, child = multiprocessing.Pipe()
        broker = multiprocessing.Process(target=_broker, args=(files, child), daemon=True)
        broker.start()
        try:
            port = parent.recv()
            seconds = asyncio.run(_drain(port, root / "pki", spool, args.rows, args.window))
        finally:
            parent.send("stop")
            broker.join(10)
            if broker.is_alive():
                broker.kill()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"drained {args.rows} rows of {args.payload} B in {seconds:.2f} s: "
              f"{args.rows / seconds:,.0f} msg/s (window {args.window}); "
              f"agent peak RSS {rss:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()

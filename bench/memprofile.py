"""Where an idle mTLS connection's memory goes in our broker: tracemalloc, by source line.

    .venv/bin/python -m bench.memprofile --nodes 2000 [--frames 1] [--top 30]

Runs the embedded broker in this process under ``tracemalloc`` (PKI from ``bench/results/pki``,
grown on demand, as ``bench.broker_fleet`` does), connects ``--nodes`` nodes from a child process
(each with its own certificate, CONNECT, SUBSCRIBE to its desire topic, then idle), and prints
the growth of traced Python memory per connection, largest first. RSS also holds what
tracemalloc does not see (OpenSSL's own allocations, allocator slack); ``bench.broker_fleet``
measures that side by side with Mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import sys
import tracemalloc
from pathlib import Path

from bench import mqtt
from bench.pki import FleetPKI, ensure_pki, node_id
from broker import BrokerSettings, EmbeddedBroker, TLSFiles

PKI_DIR = Path(__file__).parent / "results" / "pki"


async def _clients(port: int, nodes: int, pki: FleetPKI) -> None:
    """The child process: ``nodes`` idle connections, then a line on stdout, then sleep."""
    gate = asyncio.Semaphore(50)
    held = []

    async def one(index: int) -> None:
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(pki.node_file(index))
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(mqtt.connect(node_id(index)))
            await reader.readexactly(4)  # CONNACK
            writer.write(mqtt.subscribe(1, f"$baetyl/node/{node_id(index)}/desire", 1))
            await reader.readexactly(5)  # SUBACK
            held.append(writer)

    await asyncio.gather(*(one(i) for i in range(nodes)))
    print(f"{len(held)} connected", flush=True)
    await asyncio.sleep(3600)


async def _profile(nodes: int, frames: int, top: int, pki: FleetPKI) -> None:
    files = TLSFiles(ca=pki.ca_file, cert=pki.server_cert, key=pki.server_key, crl=pki.crl_file)
    settings = BrokerSettings(host="127.0.0.1", port=0, max_connections=19_000)
    async with EmbeddedBroker(settings, files) as broker:
        gc.collect()
        tracemalloc.start(frames)
        before = tracemalloc.take_snapshot()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.memprofile", "--client", str(broker.ports["mqtts"]),
            "--nodes", str(nodes), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), max(60, nodes / 50))
            print("clients:", line.decode().strip() or "failed", flush=True)
            await asyncio.sleep(3)  # the last connections settle
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            child.kill()
            await child.wait()
    stats = after.compare_to(before, "traceback" if frames > 1 else "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"traced Python memory: {total / 1024 / nodes:.2f} KiB per connection over {nodes}")
    for stat in stats[:top]:
        print(f"{stat.size_diff / nodes:8.0f} B/conn {stat.count_diff / nodes:6.2f} objects/conn")
        for text in stat.traceback.format()[-2 * frames :]:
            print("        " + text.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memprofile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=1, help="traceback depth per allocation")
    parser.add_argument("--top", type=int, default=30, help="lines to print")
    parser.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pki = ensure_pki(PKI_DIR, args.nodes, log=args.client is None)
    if args.client is not None:
        asyncio.run(_clients(args.client, args.nodes, pki))
    else:
        asyncio.run(_profile(args.nodes, args.frames, args.top, pki))


if __name__ == "__main__":
    main()

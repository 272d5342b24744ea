"""What one hostile client's subscriptions cost the broker, at the budgets' limits.

    .venv/bin/python -m bench.router_memory [--levels 32] [--length 1024] [--subscriptions 32]

In this process, no broker, no network: the subscription index (``broker.router``) and the
SUBSCRIBE decoder (``broker.packets``) that the broker runs per client. Prints, per phase:

1. **one filter at the limits** (``--levels`` levels, ``--length`` bytes, every level unique so
   every level is a new trie node): the memory the index allocates for it (tracemalloc), and what
   the same filter cost when every trie node kept its full path (the sizes of its prefixes,
   computed, not allocated);
2. **one client at its budget**: ``--subscriptions`` such filters, all different: memory and the
   time to add them (the SUBSCRIBE the broker answers in one event-loop step);
3. **the longest SUBSCRIBE a node can send** (one packet of max_packet_size, 256 KiB, of
   minimal filters): time to decode it up to the budget, where the broker stops and closes the
   connection, against decoding all of it;
4. **matching**: time to match a topic against an index holding those filters;
5. **the report's filter** (64 KiB of ``a/a/.../+``, 32,768 levels) with per-level paths:
   computed size.

Figures are medians of ``--repeat`` runs. The broker's own limits are in PROTOCOL.md ("Limits").
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

from broker.packets import MalformedPacket, decode_subscribe
from broker.router import SubscriptionIndex

MAX_PACKET = 256 * 1024


def _filter(levels: int, length: int, tag: int) -> str:
    """A wildcard filter of exactly ``levels`` levels and ``length`` characters, levels unique."""
    parts = [f"{tag}x{i}" for i in range(levels - 1)] + ["+"]
    short = length - len("/".join(parts))
    if short < 0:
        raise SystemExit(f"{levels} levels do not fit in {length} bytes")
    parts[0] += "p" * short
    return "/".join(parts)


def _path_cost(topic_filter: str) -> int:
    """Bytes the prefixes of ``topic_filter`` take as str objects (what per-level paths held)."""
    levels = topic_filter.split("/")
    total, length = 0, -1
    for level in levels:
        length += len(level) + 1
        total += sys.getsizeof("a" * length) if length < 64 else 49 + length
    return total


def _traced(build: Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def _timed(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _subscribe_body(filters: list[str]) -> bytes:
    body = bytearray(b"\x00\x01")
    for topic_filter in filters:
        data = topic_filter.encode()
        body += len(data).to_bytes(2, "big") + data + b"\x01"
    return bytes(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, default=32, help="broker.max_topic_levels")
    parser.add_argument("--length", type=int, default=1024, help="broker.max_topic_length")
    parser.add_argument("--subscriptions", type=int, default=32, help="broker.max_subscriptions")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    one = _filter(args.levels, args.length, 0)
    index: SubscriptionIndex[str, None] = SubscriptionIndex()
    cost, _ = _traced(lambda: index.add(one, "client", None, 1))
    print(f"1. one filter, {args.levels} levels, {len(one)} bytes:")
    print(f"   index allocates {cost:,} B; with per-level paths +{_path_cost(one):,} B")

    filters = [_filter(args.levels, args.length, tag) for tag in range(args.subscriptions)]

    def fill() -> SubscriptionIndex[str, None]:
        full: SubscriptionIndex[str, None] = SubscriptionIndex()
        for topic_filter in filters:
            full.add(topic_filter, "client", None, 1)
        return full

    cost, full = _traced(fill)
    add_time = _timed(fill, args.repeat)
    print(f"2. one client at its budget, {args.subscriptions} such filters:")
    print(f"   index allocates {cost:,} B ({cost / args.subscriptions:,.0f} B a filter);")
    print(f"   adding them takes {add_time * 1e3:.2f} ms")

    tiny = ["$baetyl/node/acme.gw-1/d"] * ((MAX_PACKET - 7) // 27)
    body = _subscribe_body(tiny)[: MAX_PACKET - 5]

    def decode_to_budget() -> None:
        with contextlib.suppress(MalformedPacket):
            decode_subscribe(2, body, args.subscriptions)

    def decode_all() -> None:
        with contextlib.suppress(MalformedPacket):  # the last filter is cut by the packet limit
            decode_subscribe(2, body, 1 << 20)

    to_budget, whole = _timed(decode_to_budget, args.repeat), _timed(decode_all, args.repeat)
    print(f"3. a {len(body) // 1024} KiB SUBSCRIBE of {len(tiny):,} filters:")
    print(f"   decoded up to the budget (then closed): {to_budget * 1e3:.3f} ms;")
    print(f"   all of it: {whole * 1e3:.1f} ms")

    topic = one.rsplit("/", 1)[0] + "/leaf"
    assert isinstance(full, SubscriptionIndex)

    def match() -> None:
        full._wild_cache.clear()
        list(full.match(topic))

    print(f"4. matching a {args.levels}-level topic against that client's filters (uncached):")
    print(f"   {_timed(match, args.repeat * 20) * 1e6:.1f} us")

    report = "a/" * 32767 + "+"
    print("5. the report's 64 KiB filter of 32,768 levels:")
    print(f"   with per-level paths +{_path_cost(report) / 1e9:.2f} GB; now refused by the budgets")


if __name__ == "__main__":
    main()

"""How issuing certificates scales with the number already issued (run by hand, not by CI).

For each N of ``--counts`` it creates a CA in a fresh temporary directory, issues N node
certificates from CSRs through the public API (``CertificateAuthority.issue_from_csr``, as
activation does), and prints issuances per second, the mean time per issuance in the first and last
10% (flat when issuance is O(1) in the number already issued), then the time to revoke one
certificate, to list every record (``records()``), to poll an unchanged registry
(``revoked_serials()``) and to load the CA again (which reads the whole journal once)::

    .venv/bin/python -m bench.pki_issue --counts 1000,5000,10000

The CSRs (keys generated here) are built before the clock starts. ``--dir`` chooses where the
temporary CAs live (default: the system temporary directory), since the cost of ``fsync`` depends
on the file system.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from certs import CertificateAuthority, Identity, build_csr, generate_private_key

NAMESPACE = "bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pki_issue",
        description="Issue N certificates from CSRs into a fresh CA; show the cost per issuance.",
    )
    p.add_argument(
        "--counts",
        default="1000,5000,10000",
        help="comma-separated numbers of certificates to issue, each into a fresh CA",
    )
    p.add_argument("--dir", default=None, help="where to create the temporary CAs")
    return p.parse_args(argv)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}ms"


def run(count: int, base: str | None) -> dict[str, float]:
    """Issue `count` certificates into a fresh CA; return the figures."""
    csrs = [build_csr(generate_private_key()) for _ in range(count)]
    with tempfile.TemporaryDirectory(dir=base, prefix="pki_issue-") as tmp:
        ca = CertificateAuthority.init(Path(tmp) / "ca")
        times: list[float] = []
        serials: list[int] = []
        started = time.perf_counter()
        for i, csr in enumerate(csrs):
            identity = Identity.node(NAMESPACE, f"n{i}")
            t0 = time.perf_counter()
            issued = ca.issue_from_csr(csr, identity)
            times.append(time.perf_counter() - t0)
            serials.append(issued.record.serial)
        total = time.perf_counter() - started
        tenth = max(1, count // 10)

        t0 = time.perf_counter()
        ca.revoke(serials[count // 2])
        revoke = time.perf_counter() - t0

        t0 = time.perf_counter()
        records = ca.records()
        listing = time.perf_counter() - t0
        assert len(records) == count

        t0 = time.perf_counter()
        for _ in range(1000):
            ca.revoked_serials()
        poll = (time.perf_counter() - t0) / 1000

        t0 = time.perf_counter()
        CertificateAuthority.load(ca.directory)
        load = time.perf_counter() - t0
        size = (ca.directory / "index.jsonl").stat().st_size

    return {
        "count": count,
        "per_second": count / total,
        "first": statistics.fmean(times[:tenth]),
        "last": statistics.fmean(times[-tenth:]),
        "first_median": statistics.median(times[:tenth]),
        "last_median": statistics.median(times[-tenth:]),
        "revoke": revoke,
        "records": listing,
        "poll": poll,
        "load": load,
        "journal_mb": size / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    header = (
        f"{'N':>7} | {'issued/s':>8} | {'first 10%':>18} | {'last 10%':>18} | {'revoke':>9} | "
        f"{'records()':>9} | {'poll':>9} | {'load':>9} | journal"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        r = run(count, args.dir)
        print(
            f"{count:>7} | {r['per_second']:>8.0f} | "
            f"{_ms(r['first']) + ' (' + _ms(r['first_median']) + ')':>18} | "
            f"{_ms(r['last']) + ' (' + _ms(r['last_median']) + ')':>18} | "
            f"{_ms(r['revoke']):>9} | {_ms(r['records']):>9} | "
            f"{_ms(r['poll']):>9} | {_ms(r['load']):>9} | {r['journal_mb']:.1f} MB",
            flush=True,
        )
    print(
        "first/last 10%: mean (median) time per issue_from_csr; revoke: one revocation (CRL "
        "re-signed); poll: revoked_serials() on an unchanged CA; load: CertificateAuthority.load "
        "(reads the whole journal)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

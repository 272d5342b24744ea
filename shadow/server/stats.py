"""What the shadow service counts: requests, their latency, throttling and store errors.

Plain integers and one fixed-bucket histogram, incremented by the service as it works; whoever
reports them (the management API's ``/metrics``) reads them when asked. The service itself
knows nothing of the format they are reported in.
"""

from __future__ import annotations

from bisect import bisect_left
from enum import StrEnum

__all__ = ["LATENCY_BUCKETS", "Histogram", "RequestKind", "ShadowStats", "StoreOperation"]

# Seconds; a report is answered once its batch has committed (a few ms on a quiet database).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestKind(StrEnum):
    REPORT = "report"  # a node's reported state
    DESIRE_GET = "desire/get"  # a node asks for its desired state
    RESOURCE_GET = "resource/get"  # a node asks for an app, config or secret
    WRITE = "write"  # a desired-state write through the Python interface (the API)
    READ = "read"  # a read of one shadow through the Python interface


class StoreOperation(StrEnum):
    LOAD = "load"  # reading shadows failed
    COMMIT = "commit"  # writing a batch failed
    CONFLICT = "conflict"  # another writer changed a shadow underneath (retried once)


class Histogram:
    """Observations counted into fixed buckets (upper bounds), with their sum."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


class ShadowStats:
    """Running totals of one shadow service."""

    __slots__ = ("latency", "requests", "store_errors", "throttled")

    def __init__(self) -> None:
        self.requests: dict[RequestKind, int] = dict.fromkeys(RequestKind, 0)
        self.throttled: dict[str, int] = {"rate": 0, "overload": 0}  # refused with 429
        self.store_errors: dict[StoreOperation, int] = dict.fromkeys(StoreOperation, 0)
        self.latency = Histogram()  # arrival to answer, node requests and API calls alike

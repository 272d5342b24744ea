"""The cloud's Prometheus metrics: read from the broker and the shadow service at scrape time.

The broker and the shadow service count as they work (integers, one histogram) and know nothing
of Prometheus; ``CloudCollector`` turns what they hold into metric families when ``/metrics`` is
scraped. Each cloud owns its registry (``metrics_registry``): several clouds in one process (the
tests) never share one. Every name, type and label is listed in docs/metrics.md, and a test
checks the list against what is exposed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from broker import BrokerStats
from shadow.server import ShadowStats

__all__ = ["BrokerSource", "CloudCollector", "ShadowSource", "metrics_registry"]


class BrokerSource(Protocol):
    """The embedded broker, as far as the metrics read it."""

    def stats(self) -> BrokerStats: ...


class ShadowSource(Protocol):
    """The shadow service, as far as the metrics read it."""

    @property
    def stats(self) -> ShadowStats: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def cached(self) -> int: ...

    @property
    def bus_connected(self) -> bool: ...


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, values: dict[str, int]
) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class CloudCollector(Collector):
    """The broker's and the shadow service's figures as Prometheus metric families.

    ``broker`` is None in the external-broker mode (``bus.mode = "external"``): the broker's
    metrics then come from that broker, and only the shadow service's are here.
    """

    def __init__(self, broker: BrokerSource | None, shadow: ShadowSource) -> None:
        self._broker = broker
        self._shadow = shadow

    def collect(self) -> Iterator[Metric]:
        if self._broker is not None:
            yield from self._broker_metrics(self._broker.stats())
        yield from self._shadow_metrics()

    @staticmethod
    def _broker_metrics(stats: BrokerStats) -> Iterator[Metric]:
        yield _labelled(
            GaugeMetricFamily(
                "baetyl_broker_connections",
                "Clients connected to the embedded broker, by the role of their identity.",
                labels=["role"],
            ),
            stats.connections,
        )
        yield GaugeMetricFamily(
            "baetyl_broker_open_connections",
            "Connections past the TLS handshake, connected or still sending CONNECT.",
            value=stats.open_connections,
        )
        yield GaugeMetricFamily(
            "baetyl_broker_sessions",
            "MQTT sessions the broker keeps, connected or not.",
            value=stats.sessions,
        )
        yield CounterMetricFamily(
            "baetyl_broker_messages_received",
            "PUBLISH packets from clients that the ACL let through and the broker routed.",
            value=stats.messages_received,
        )
        yield CounterMetricFamily(
            "baetyl_broker_messages_sent",
            "Copies of messages delivered to, or queued for, subscribers (in-process included).",
            value=stats.messages_sent,
        )
        yield _labelled(
            CounterMetricFamily(
                "baetyl_broker_dropped_messages",
                "Messages dropped, by reason: denied by the ACL, the oldest of a full queue, "
                "or for an offline client that keeps no queue.",
                labels=["reason"],
            ),
            stats.drops,
        )
        yield _labelled(
            CounterMetricFamily(
                "baetyl_broker_refused_connections",
                "Connections refused in the TLS handshake, at CONNECT or over the connection "
                "limit, by reason.",
                labels=["reason"],
            ),
            stats.refusals,
        )
        yield _labelled(
            CounterMetricFamily(
                "baetyl_broker_disconnects",
                "Clients disconnected, by reason.",
                labels=["reason"],
            ),
            stats.disconnects,
        )
        yield GaugeMetricFamily(
            "baetyl_broker_queued_messages",
            "Messages waiting in the sessions' queues (offline, or behind a full window).",
            value=stats.queued_messages,
        )
        yield GaugeMetricFamily(
            "baetyl_broker_inflight_messages",
            "QoS 1 and 2 messages sent to clients and not yet acknowledged.",
            value=stats.inflight_messages,
        )

    def _shadow_metrics(self) -> Iterator[Metric]:
        shadow = self._shadow
        stats = shadow.stats
        yield _labelled(
            CounterMetricFamily(
                "baetyl_shadow_requests",
                "Requests to the shadow service: the nodes' (report, desire/get, resource/get) "
                "and the API's (write, read).",
                labels=["kind"],
            ),
            {str(kind): n for kind, n in stats.requests.items()},
        )
        yield _labelled(
            CounterMetricFamily(
                "baetyl_shadow_throttled_requests",
                "Node requests refused with 429: over the node's rate, or the service's queue "
                "full.",
                labels=["reason"],
            ),
            stats.throttled,
        )
        histogram = HistogramMetricFamily(
            "baetyl_shadow_request_duration_seconds",
            "Seconds from a request's arrival to its answer (after its batch committed).",
        )
        buckets = [
            ("+Inf" if bound == float("inf") else f"{bound:g}", count)
            for bound, count in stats.latency.cumulative()
        ]
        histogram.add_metric([], buckets, stats.latency.sum)
        yield histogram
        yield _labelled(
            CounterMetricFamily(
                "baetyl_shadow_store_errors",
                "Failed store operations: load, commit, or conflict (another writer first).",
                labels=["operation"],
            ),
            {str(op): n for op, n in stats.store_errors.items()},
        )
        yield GaugeMetricFamily(
            "baetyl_shadow_queue_depth",
            "Operations waiting for the shadow service's writer.",
            value=shadow.queue_depth,
        )
        yield GaugeMetricFamily(
            "baetyl_shadow_cached",
            "Shadows held in memory.",
            value=shadow.cached,
        )
        yield GaugeMetricFamily(
            "baetyl_bus_connected",
            "1 when the shadow service's MQTT bus is up (embedded, or the external broker).",
            value=1 if shadow.bus_connected else 0,
        )


def metrics_registry(broker: BrokerSource | None, shadow: ShadowSource) -> CollectorRegistry:
    """A registry of its own for one cloud: its figures and the process's (``process_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CloudCollector(broker, shadow))
    ProcessCollector(registry=registry)
    return registry

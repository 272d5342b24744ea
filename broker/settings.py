"""The broker's settings: listeners, limits and the files of its TLS identity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.limits import MAX_TOPIC_LEVELS_CEILING, Budgets

_DEFAULT_BUDGETS = Budgets()

__all__ = ["BrokerSettings", "TLSFiles"]


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Listeners and limits of the embedded broker (the ``[broker]`` section of baetyl.toml)."""

    host: str = "0.0.0.0"  # noqa: S104 - the broker serves the fleet; bind narrower by config
    port: int = 8883
    ws_port: int | None = None
    plain_port: int | None = None
    max_connections: int = 18_000
    max_packet_size: int = 256 * 1024
    connect_timeout: float = 10.0
    crl_poll_interval: float = 0.25
    # Per-client budgets (broker/limits.py, PROTOCOL.md "Limits"): a filter or topic over them
    # is refused (SUBACK 0x80, or the PUBLISH dropped), and so is a subscription past the count.
    max_topic_levels: int = _DEFAULT_BUDGETS.max_topic_levels
    max_topic_length: int = _DEFAULT_BUDGETS.max_topic_length
    max_subscriptions: int = _DEFAULT_BUDGETS.max_subscriptions
    service_max_subscriptions: int = _DEFAULT_BUDGETS.service_max_subscriptions
    # Bytes of the read buffer asyncio gives each TLS connection for its handshake (it defaults
    # to 256 KiB, zeroed, per connection: 2.5 GB for 10,000 idle nodes). Once connected, a
    # connection reads into one buffer shared by the broker's connections (broker/core.py).
    tls_read_buffer: int = 4 * 1024
    # Run by `baetyl up` / `baetyl broker run` (see broker/gcpolicy.py); 0 turns it off.
    gc_freeze_interval: float = 2.0
    gc_full_collect_interval: float = 600.0

    def __post_init__(self) -> None:
        for name in ("port", "ws_port", "plain_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"broker.{name} is {port}; use a TCP port from 0 to 65535.")
        if self.max_connections < 1:
            raise ValueError("broker.max_connections must be at least 1.")
        if not 64 <= self.max_packet_size <= 256 * 1024 * 1024:
            raise ValueError("broker.max_packet_size must be between 64 bytes and 256 MiB.")
        if self.connect_timeout <= 0:
            raise ValueError("broker.connect_timeout must be a positive number of seconds.")
        if not 4096 <= self.tls_read_buffer <= 1024 * 1024:
            raise ValueError("broker.tls_read_buffer must be between 4096 bytes and 1 MiB.")
        if self.gc_freeze_interval < 0 or self.gc_full_collect_interval <= 0:
            raise ValueError(
                "broker.gc_freeze_interval must be 0 (off) or more, and "
                "broker.gc_full_collect_interval more than 0 seconds."
            )
        if not 0.05 <= self.crl_poll_interval <= 60:
            raise ValueError("broker.crl_poll_interval must be between 0.05 and 60 seconds.")
        # The floors keep pybaetyl's own topics ($baetyl/node/<id>/resource/rejected: 5 levels,
        # under 200 bytes) and a node's subscriptions (about 7) within any configuration.
        if not 8 <= self.max_topic_levels <= MAX_TOPIC_LEVELS_CEILING:
            raise ValueError(
                f"broker.max_topic_levels must be between 8 and {MAX_TOPIC_LEVELS_CEILING}."
            )
        if not 256 <= self.max_topic_length <= 65535:
            raise ValueError("broker.max_topic_length must be between 256 and 65535 bytes.")
        if not 8 <= self.max_subscriptions <= self.service_max_subscriptions <= 10_000_000:
            raise ValueError(
                "broker.max_subscriptions must be at least 8, and "
                "broker.service_max_subscriptions at least as large (at most 10,000,000)."
            )

    @property
    def budgets(self) -> Budgets:
        """The per-client budgets these settings give."""
        return Budgets(
            max_topic_levels=self.max_topic_levels,
            max_topic_length=self.max_topic_length,
            max_subscriptions=self.max_subscriptions,
            service_max_subscriptions=self.service_max_subscriptions,
        )


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Where the broker's TLS identity lives; all of it is re-read on reload."""

    ca: Path
    cert: Path
    key: Path
    crl: Path

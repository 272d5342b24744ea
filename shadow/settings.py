"""The shadow service's settings (the ``[shadow]`` section of baetyl.toml)."""

from __future__ import annotations

from dataclasses import dataclass

from shadow.document import Limits

__all__ = ["ShadowSettings"]


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """Limits and pacing of the shadow service."""

    max_section_bytes: int = 65536  # a section's state as compact JSON (413 beyond)
    max_depth: int = 10  # nesting levels of a section's state (400 beyond)
    max_payload_bytes: int = 131072  # one request's payload (413 beyond)
    report_rate: float = 10.0  # requests per second a node may send, sustained (429 beyond)
    report_burst: int = 50  # requests a node may send at once after being quiet
    max_batch: int = 2000  # requests written in one transaction at most
    max_queue: int = 100_000  # requests waiting at most; more are refused with 429

    def __post_init__(self) -> None:
        for name in ("max_section_bytes", "max_depth", "max_payload_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"shadow.{name} must be at least 1.")
        if self.report_rate <= 0 or self.report_burst < 1:
            raise ValueError("shadow.report_rate must be above 0 and shadow.report_burst >= 1.")
        if self.max_queue < self.max_batch:
            raise ValueError("shadow.max_queue must be at least shadow.max_batch.")

    @property
    def limits(self) -> Limits:
        return Limits(max_bytes=self.max_section_bytes, max_depth=self.max_depth)

"""Fixtures for the certs tests: a CA in a temporary directory with a clock the test controls."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from certs import CertificateAuthority
from tests.certs.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock starting at the real now (so openssl and TLS agree), moved by the test."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    """A fresh CA in ``tmp_path / "ca"``."""
    return CertificateAuthority.init(tmp_path / "ca", now=clock)

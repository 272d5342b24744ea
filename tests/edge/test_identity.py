"""The node generates its own key; only the CSR leaves it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from edge import KeyFileError, create_key_and_csr


def test_key_is_private_and_csr_is_signed(tmp_path: Path) -> None:
    """The key file is 0600 even under a permissive umask, and the CSR verifies with it."""
    old = os.umask(0)
    try:
        files = create_key_and_csr(tmp_path / "state", common_name="default.n1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    csr = x509.load_pem_x509_csr(files.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=default.n1"


def test_existing_key_is_never_replaced(tmp_path: Path) -> None:
    """Generating again refuses rather than silently changing the node's identity."""
    files = create_key_and_csr(tmp_path)
    before = files.key.read_bytes()
    with pytest.raises(KeyFileError, match="already has a key"):
        create_key_and_csr(tmp_path)
    assert files.key.read_bytes() == before

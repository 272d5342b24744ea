"""Keys, CSRs and file writes: private material never readable by group or others."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs import (
    KeyType,
    PrivateKeyError,
    build_csr,
    generate_private_key,
    load_private_key,
    write_private_file,
    write_private_key,
    write_public_file,
)
from certs.keys import private_key_pem


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("key_type", "expected"),
    [
        (KeyType.EC_P256, "secp256r1"),
        (KeyType.EC_P384, "secp384r1"),
        (KeyType.RSA_2048, "rsa-2048"),
    ],
)
def test_generate_private_key(key_type: KeyType, expected: str) -> None:
    """Each key type yields the curve or modulus size it names."""
    key = generate_private_key(key_type)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == expected
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert f"rsa-{key.key_size}" == expected


def test_default_key_type_is_p256() -> None:
    """Without a key type, the key is EC P-256."""
    key = generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


@pytest.mark.usefixtures("permissive_umask")
def test_private_key_is_0600_even_with_umask_000(tmp_path: Path) -> None:
    """A key written under umask 000 is still 0600, and its new parent directory is 0700."""
    path = tmp_path / "new" / "node.key"
    write_private_key(path, generate_private_key())
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


@pytest.mark.usefixtures("permissive_umask")
def test_private_key_replaces_a_world_readable_file(tmp_path: Path) -> None:
    """Overwriting a pre-existing 0644 file leaves a 0600 key and no temporary files behind."""
    path = tmp_path / "node.key"
    path.write_text("old")
    path.chmod(0o644)
    key = generate_private_key()
    write_private_key(path, key)
    assert _mode(path) == 0o600
    assert path.read_bytes() == private_key_pem(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


@pytest.mark.usefixtures("permissive_umask")
def test_private_file_is_0600(tmp_path: Path) -> None:
    """Secret bytes written with write_private_file are 0600."""
    path = tmp_path / "x.key"
    write_private_file(path, b"secret")
    assert _mode(path) == 0o600


def test_public_file_is_0644_under_strict_umask(tmp_path: Path) -> None:
    """Certificates and CRLs are world-readable even when the umask is 077."""
    old = os.umask(0o077)
    try:
        write_public_file(tmp_path / "ca.crt", b"cert")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.crt") == 0o644


def test_load_round_trip(tmp_path: Path) -> None:
    """A written key loads back as the same key."""
    key = generate_private_key(KeyType.EC_P384)
    write_private_key(tmp_path / "k.pem", key)
    assert private_key_pem(load_private_key(tmp_path / "k.pem")) == private_key_pem(key)


def test_load_refuses_garbage_and_missing(tmp_path: Path) -> None:
    """A file that is no key, or no file at all, raises PrivateKeyError."""
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(PrivateKeyError, match="unencrypted PEM"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(PrivateKeyError, match="Cannot read"):
        load_private_key(tmp_path / "missing")


def test_load_refuses_ed25519(tmp_path: Path) -> None:
    """Only EC and RSA keys are supported."""
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(private_key_pem(key))  # type: ignore[arg-type]
    with pytest.raises(PrivateKeyError, match="neither EC nor RSA"):
        load_private_key(tmp_path / "ed.pem")


def test_build_csr() -> None:
    """A CSR carries the key, a valid signature, and the optional common name only."""
    key = generate_private_key()
    empty = x509.load_pem_x509_csr(build_csr(key))
    named = x509.load_pem_x509_csr(build_csr(key, "acme.gw"))
    assert empty.is_signature_valid
    assert named.is_signature_valid
    assert list(empty.subject) == []
    assert named.subject.rfc4514_string() == "CN=acme.gw"
    assert empty.public_key() == key.public_key()

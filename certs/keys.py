"""Private keys, CSRs and safe file writes.

This module holds nothing server-side: the edge agent uses it to make its own key and CSR at
activation. Private keys are written unencrypted (PKCS#8 PEM) with mode 0600 from the first byte,
through a temporary file in the same directory and an atomic rename, so a crash never leaves a
half-written or readable key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certs.errors import PrivateKeyError

__all__ = [
    "KeyType",
    "PrivateKey",
    "atomic_write",
    "build_csr",
    "generate_private_key",
    "load_private_key",
    "private_key_pem",
    "signature_hash",
    "write_private_file",
    "write_private_key",
    "write_public_file",
]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The private keys pybaetyl makes and accepts."""


class KeyType(StrEnum):
    """The supported key algorithms; EC P-256 is the default (small and fast)."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}


def generate_private_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    """Generate a fresh private key of `key_type`."""
    key_type = KeyType(key_type)
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest to sign with `key`: SHA-384 for P-384, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey) -> bytes:
    """Serialize `key` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_parent(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically; the file has exactly `mode` from its creation on."""
    path = Path(path)
    _ensure_parent(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_EXCL, mode & 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write `key` to `path` as PKCS#8 PEM, mode 0600, atomically; a missing parent is made 0700."""
    atomic_write(path, private_key_pem(key), 0o600)


def write_private_file(path: Path, data: bytes) -> None:
    """Write secret bytes (e.g. `IssuedCertificate.private_key_pem`) with mode 0600, atomically."""
    atomic_write(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write public material (a certificate, chain or CRL) to `path` with mode 0644, atomically."""
    atomic_write(path, data, 0o644)


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted EC or RSA private key from a PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PrivateKeyError(f"Cannot read the private key {path}: {exc.strerror}.") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PrivateKeyError(
            f"The file {path} does not hold an unencrypted PEM private key; "
            "provide an unencrypted PKCS#8 or traditional PEM key."
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PrivateKeyError(
            f"The private key in {path} is neither EC nor RSA; use an EC P-256/P-384 or RSA key."
        )
    return key


def build_csr(key: PrivateKey, common_name: str | None = None) -> bytes:
    """Build a PEM certificate signing request for `key`.

    The CA decides the identity, so the subject may be left empty; if given, `common_name` must be
    the identity's common name exactly (the CA refuses any other).
    """
    attributes = []
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(attributes))
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)

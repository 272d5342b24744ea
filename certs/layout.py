"""The CA directory on disk: its files, its lock, and creating or loading the CA key pair.

Layout (the directory is mode 0700)::

    ca.key       the CA private key, 0600 (loading refuses it if group or others can read it)
    ca.crt       the self-signed CA certificate
    index.jsonl  the journal: every certificate issued and every revocation, appended one line per
                 change (format in `certs.records`, reading and appending in `certs.registry`)
    crl.pem      the current CRL, rewritten on every revocation and renewal
    .lock        ``flock``-ed around every change, so the CLI and the server can share the CA
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import CAExistsError, CAInvalidError, CANotFoundError, InsecurePermissionsError
from certs.keys import (
    KeyType,
    PrivateKey,
    atomic_write,
    generate_private_key,
    load_private_key,
    write_private_key,
    write_public_file,
)
from certs.profiles import build_ca_certificate, build_crl, pem
from certs.records import CrlPublished, encode_commit, encode_header

__all__ = ["CA_CERT", "CA_KEY", "CRL", "JOURNAL", "LOCK", "create", "load", "locked"]

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
JOURNAL = "index.jsonl"
CRL = "crl.pem"
LOCK = ".lock"


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the CA directory's exclusive lock."""
    fd = os.open(directory / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def spki(key: Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key, to compare keys."""
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def create(
    directory: Path, *, common_name: str, key_type: KeyType, lifetime: timedelta, now: datetime
) -> None:
    """Create the CA files in `directory` (made 0700 if missing); never overwrite any."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        directory.chmod(0o700)
    with locked(directory):
        for name in (CA_KEY, CA_CERT, JOURNAL):
            if (directory / name).exists():
                raise CAExistsError(
                    f"A CA already exists in {directory} ({name} is there) and is never "
                    "overwritten; use it, or choose another directory."
                )
        key = generate_private_key(key_type)
        certificate = build_ca_certificate(key, common_name, now, lifetime)
        write_private_key(directory / CA_KEY, key)
        write_public_file(directory / CA_CERT, pem(certificate))
        journal = encode_header() + encode_commit(now, [CrlPublished(1)])
        atomic_write(directory / JOURNAL, journal, 0o600)
        crl = build_crl(key, certificate, [], number=1, now=now, next_update_days=7)
        write_public_file(directory / CRL, crl.public_bytes(serialization.Encoding.PEM))


def load(directory: Path) -> tuple[PrivateKey, x509.Certificate]:
    """Load the CA key and certificate, checking the key's mode and that the two match."""
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not key_path.exists() and not cert_path.exists():
        raise CANotFoundError(
            f"There is no CA in {directory}; run `baetyl certs init` to create one."
        )
    for path in (key_path, cert_path):
        if not path.exists():
            raise CAInvalidError(
                f"The CA in {directory} is incomplete: {path.name} is missing; restore it from "
                "a backup."
            )
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InsecurePermissionsError(
            f"The CA key {key_path} is readable by group or others (mode {mode:04o}); "
            f"run `chmod 600 {key_path}` and try again."
        )
    key = load_private_key(key_path)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise CAInvalidError(
            f"The file {cert_path} is not a pybaetyl CA certificate ({exc}); restore it from "
            "a backup."
        ) from exc
    if not constraints.value.ca:
        raise CAInvalidError(f"The certificate {cert_path} is not a CA certificate.")
    if spki(key.public_key()) != spki(certificate.public_key()):
        raise CAInvalidError(
            f"The CA key {key_path} does not match the CA certificate {cert_path}; restore the "
            "pair from the same backup."
        )
    return key, certificate

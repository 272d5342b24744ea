"""The node's own key pair and certificate signing request.

The edge generates its private key locally and never sends it anywhere: only the CSR leaves the
node. Key files are created 0600 from the first byte (no window with wider permissions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.errors import KeyFileError

__all__ = ["NodeKeyFiles", "create_key_and_csr"]

KEY_FILE = "node.key"
CSR_FILE = "node.csr"


@dataclass(frozen=True, slots=True)
class NodeKeyFiles:
    """Where the node's key and CSR live inside its state directory."""

    key: Path
    csr: Path


def create_key_and_csr(state_dir: Path, *, common_name: str | None = None) -> NodeKeyFiles:
    """Generate an EC P-256 key (0600) and a CSR in ``state_dir``; refuse to replace a key."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, csr_path = state_dir / KEY_FILE, state_dir / CSR_FILE
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{key_path} already exists; this node already has a key. Remove it only if you "
            "mean to give the node a new identity."
        ) from None
    except OSError as exc:
        raise KeyFileError(f"Cannot create {key_path}: {exc.strerror}.") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .sign(key, hashes.SHA256())
    )
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return NodeKeyFiles(key=key_path, csr=csr_path)

"""What a node does to activate, done by hand: a CSR, an HTTPS client trusting only the cloud's
CA, and the answer's certificate saved with the node's key as a node keeps them."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import write_private_file, write_public_file
from tests.broker.helpers import Creds

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def make_csr(key: Key | None = None, subject: list[x509.NameAttribute[Any]] | None = None) -> str:
    """A PEM CSR for ``key`` (a fresh EC P-256 key if none) with ``subject`` (empty if none)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject or []))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def https_session(ca_path: Path) -> aiohttp.ClientSession:
    """A client that trusts only the cloud's CA (and checks the server's name)."""
    context = ssl.create_default_context(cafile=str(ca_path))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


def save_creds(directory: Path, answer: dict[str, Any], key: Key) -> Creds:
    """Write the activation's certificate and the node's key as a node would keep them."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key_path = directory / "node.crt", directory / "node.key"
    write_public_file(cert, answer["certificate"].encode())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(key_path, pem)
    serial = x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
    return Creds(answer["nodeId"], cert, key_path, serial)

"""Helpers for the certs tests: a settable clock, CSRs, TLS contexts, a loopback handshake."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certs import CertificateAuthority, IssuedCertificate, build_csr, generate_private_key
from certs.keys import PrivateKey, write_private_file, write_private_key


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def new_csr(common_name: str | None = None) -> tuple[PrivateKey, bytes]:
    """A fresh EC P-256 key and a CSR for it."""
    key = generate_private_key()
    return key, build_csr(key, common_name)


def custom_csr(
    key: PrivateKey | object,
    attributes: list[x509.NameAttribute[str]] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> bytes:
    """A CSR signed by any key cryptography supports, with a chosen subject and SAN."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes or []))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if type(key).__name__.startswith("Ed") else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def cn(value: str) -> x509.NameAttribute[str]:
    """A common name attribute."""
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def write_pair(directory: Path, stem: str, issued: IssuedCertificate, key: PrivateKey) -> Path:
    """Write ``<stem>.crt`` and ``<stem>.key``; return the certificate path."""
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(issued.certificate_pem)
    write_private_key(directory / f"{stem}.key", key)
    return cert_path


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run openssl and capture its output."""
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def server_context(ca: CertificateAuthority, directory: Path, *, crl: bool) -> ssl.SSLContext:
    """A TLS server that requires client certificates from `ca` (and checks the CRL if asked)."""
    issued = ca.issue_server("localhost", dns_names=["localhost"], ip_addresses=[ipv4_loopback()])
    (directory / "server.crt").write_bytes(issued.chain_pem)
    assert issued.private_key_pem is not None
    write_private_file(directory / "server.key", issued.private_key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.crt", directory / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca.ca_path)
    if crl:
        context.load_verify_locations(cafile=ca.crl_path)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(ca: CertificateAuthority, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS client that trusts `ca` and presents `cert`."""
    context = ssl.create_default_context(cafile=ca.ca_path)
    context.load_cert_chain(cert, key)
    return context


def ipv4_loopback() -> ipaddress.IPv4Address:
    """127.0.0.1."""
    return ipaddress.IPv4Address("127.0.0.1")


@dataclass
class Handshake:
    """What each side of one loopback TLS connection saw."""

    peer: x509.Certificate | None = None
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    reply: bytes = b""


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    """Connect `client` to `server` over a real loopback socket and exchange one message."""
    result = Handshake()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn, server.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    if der is not None:
                        result.peer = x509.load_der_x509_certificate(der)
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError) as exc:
                result.server_error = exc

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                result.reply = tls.recv(5)
        except (ssl.SSLError, OSError) as exc:
            result.client_error = exc
        thread.join(10)
    return result


__all__ = [
    "FakeClock",
    "Handshake",
    "client_context",
    "cn",
    "custom_csr",
    "handshake",
    "new_csr",
    "openssl",
    "server_context",
    "write_pair",
]

"""Issued certificates in real TLS handshakes over loopback sockets with Python's ssl."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from certs import CertificateAuthority, Identity
from tests.certs.helpers import client_context, handshake, new_csr, server_context, write_pair

NODE = Identity.node("acme", "gw-1")


def _node(ca: CertificateAuthority, directory: Path, name: str) -> tuple[Path, Path, int]:
    key, csr = new_csr()
    issued = ca.issue_from_csr(csr, Identity.node("acme", name))
    cert = write_pair(directory, name, issued, key)
    return cert, directory / f"{name}.key", issued.record.serial


def test_node_certificate_in_mutual_tls(ca: CertificateAuthority, tmp_path: Path) -> None:
    """The server verifies the node's certificate and reads the node identity from it."""
    cert, key, _ = _node(ca, tmp_path, "gw-1")
    result = handshake(server_context(ca, tmp_path, crl=False), client_context(ca, cert, key))
    assert result.server_error is None
    assert result.client_error is None
    assert result.reply == b"hello"
    assert result.peer is not None
    assert Identity.from_certificate(result.peer) == NODE
    assert Identity.from_certificate(result.peer).node_id == "acme.gw-1"


def test_crl_check_refuses_a_revoked_client(ca: CertificateAuthority, tmp_path: Path) -> None:
    """With VERIFY_CRL_CHECK_LEAF and crl.pem loaded, a revoked node is refused in the handshake."""
    cert, key, serial = _node(ca, tmp_path, "gw-1")
    ca.revoke(serial, x509.ReasonFlags.key_compromise)
    result = handshake(server_context(ca, tmp_path, crl=True), client_context(ca, cert, key))
    assert result.peer is None
    assert result.server_error is not None
    assert "revoked" in str(result.server_error)
    assert result.reply == b""


def test_crl_check_accepts_an_unrevoked_client(ca: CertificateAuthority, tmp_path: Path) -> None:
    """With the CRL loaded, a node that is not on it still connects."""
    cert, key, _ = _node(ca, tmp_path, "gw-1")
    _, _, revoked_serial = _node(ca, tmp_path, "gw-2")
    ca.revoke(revoked_serial)
    result = handshake(server_context(ca, tmp_path, crl=True), client_context(ca, cert, key))
    assert result.server_error is None, result.server_error
    assert result.peer is not None
    assert Identity.from_certificate(result.peer) == NODE


def test_crl_check_refuses_a_superseded_client(ca: CertificateAuthority, tmp_path: Path) -> None:
    """After renewal, the old certificate no longer passes the handshake; the new one does."""
    old_cert, old_key, _ = _node(ca, tmp_path, "gw-1")
    new_key, csr = new_csr()
    renewed = ca.renew(old_cert.read_bytes(), csr)
    new_cert = write_pair(tmp_path, "gw-1-new", renewed, new_key)
    server = server_context(ca, tmp_path, crl=True)
    old = handshake(server, client_context(ca, old_cert, old_key))
    assert old.peer is None
    assert "revoked" in str(old.server_error)
    new = handshake(server, client_context(ca, new_cert, tmp_path / "gw-1-new.key"))
    assert new.peer is not None
    assert Identity.from_certificate(new.peer) == NODE


def test_foreign_ca_client_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A client certificate from another CA fails verification."""
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    cert, key, _ = _node(foreign, tmp_path, "gw-1")
    result = handshake(server_context(ca, tmp_path, crl=False), client_context(ca, cert, key))
    assert result.peer is None
    assert "certificate verify failed" in str(result.server_error)

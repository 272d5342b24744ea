"""Renewal: a new certificate for the same identity from a new key; the old one is superseded."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certs import (
    CertificateAuthority,
    CertificateRejectedError,
    CSRRejectedError,
    Identity,
    Status,
    build_csr,
)
from tests.certs.helpers import FakeClock, new_csr

NODE = Identity.node("acme", "gw-1")


def test_renewal_replaces_the_certificate(ca: CertificateAuthority) -> None:
    """The new certificate names the same identity with the new key; the old is superseded."""
    old = ca.issue_from_csr(new_csr()[1], NODE, validity_days=30)
    new_key, csr = new_csr()
    new = ca.renew(old.certificate_pem, csr)
    assert Identity.from_certificate(new.certificate) == NODE
    assert new.certificate.public_key() == new_key.public_key()
    assert new.record.serial != old.record.serial
    assert new.record.lifetime == old.record.lifetime
    superseded = ca.record(old.record.serial)
    assert superseded.status is Status.SUPERSEDED
    assert superseded.superseded_by == new.record.serial
    assert ca.record(new.record.serial).status is Status.VALID

    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(old.record.serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.superseded
    assert crl.get_revoked_certificate_by_serial_number(new.record.serial) is None


def test_renewal_validity_can_be_chosen(ca: CertificateAuthority) -> None:
    """An explicit validity overrides the original lifetime."""
    old = ca.issue_from_csr(new_csr()[1], NODE, validity_days=30)
    new = ca.renew(old.certificate_pem, new_csr()[1], validity_days=7)
    assert new.record.lifetime == timedelta(days=7, minutes=5)


def test_renewing_twice_from_the_same_certificate_is_refused(ca: CertificateAuthority) -> None:
    """A superseded certificate cannot be renewed again."""
    old = ca.issue_from_csr(new_csr()[1], NODE)
    ca.renew(old.certificate_pem, new_csr()[1])
    with pytest.raises(CertificateRejectedError, match="superseded"):
        ca.renew(old.certificate_pem, new_csr()[1])


def test_renewing_a_revoked_certificate_is_refused(ca: CertificateAuthority) -> None:
    """A revoked certificate cannot be renewed."""
    old = ca.issue_from_csr(new_csr()[1], NODE)
    ca.revoke(old.record.serial, x509.ReasonFlags.key_compromise)
    with pytest.raises(CertificateRejectedError, match="revoked"):
        ca.renew(old.certificate_pem, new_csr()[1])


def test_renewing_an_expired_certificate_is_refused(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    """Once not_after has passed, the certificate cannot be renewed."""
    old = ca.issue_from_csr(new_csr()[1], NODE, validity_days=1)
    clock.advance(timedelta(days=2))
    with pytest.raises(CertificateRejectedError, match="expired"):
        ca.renew(old.certificate_pem, new_csr()[1])


def test_renewing_a_foreign_certificate_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A certificate from another CA, even for the same identity, cannot be renewed here."""
    foreign_ca = CertificateAuthority.init(tmp_path / "foreign")
    foreign = foreign_ca.issue_from_csr(new_csr()[1], NODE)
    with pytest.raises(CertificateRejectedError, match="not issued by this CA"):
        ca.renew(foreign.certificate_pem, new_csr()[1])


def test_renewing_an_unregistered_certificate_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A certificate signed by this CA key but missing from the registry is refused."""
    other = CertificateAuthority.load(ca.directory)
    issued = other.issue_from_csr(new_csr()[1], NODE)
    journal = ca.directory / "index.jsonl"
    # Forge the registry back to empty, as if the certificate had never been recorded.
    journal.write_text(journal.read_text().splitlines(keepends=True)[0])
    with pytest.raises(CertificateRejectedError, match="not in this CA's registry"):
        ca.renew(issued.certificate_pem, new_csr()[1])


def test_renewal_with_the_same_key_is_refused(ca: CertificateAuthority) -> None:
    """Renewal must bring a new key."""
    key, csr = new_csr()
    old = ca.issue_from_csr(csr, NODE)
    with pytest.raises(CSRRejectedError, match="reuses the key"):
        ca.renew(old.certificate_pem, build_csr(key))
    assert ca.record(old.record.serial).status is Status.VALID


def test_renewal_csr_cannot_change_identity(ca: CertificateAuthority) -> None:
    """The renewal CSR is held to the old identity; naming another is refused."""
    old = ca.issue_from_csr(new_csr()[1], NODE)
    with pytest.raises(CSRRejectedError, match="claims another identity"):
        ca.renew(old.certificate_pem, new_csr("acme.other")[1])


def test_server_certificates_are_not_renewed(ca: CertificateAuthority) -> None:
    """Server certificates are reissued, not renewed from a CSR."""
    server = ca.issue_server("localhost", dns_names=["localhost"])
    with pytest.raises(CertificateRejectedError, match="server certificate"):
        ca.renew(server.certificate_pem, new_csr()[1])


def test_garbage_current_certificate_is_refused(ca: CertificateAuthority) -> None:
    """Bytes that are not a certificate are refused as the current certificate."""
    with pytest.raises(CertificateRejectedError, match="not a readable PEM"):
        ca.renew(b"junk", new_csr()[1])

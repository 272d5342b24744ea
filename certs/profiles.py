"""What goes into each certificate the CA signs: the CA itself, TLS servers, clients, and the CRL.

Pure functions: they build and sign, they never touch the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.csr import PublicKey
from certs.keys import PrivateKey, signature_hash
from certs.records import CertificateRecord

__all__ = [
    "CLOCK_SKEW",
    "build_ca_certificate",
    "build_crl",
    "build_leaf_certificate",
    "fingerprint",
    "pem",
]

CLOCK_SKEW = timedelta(minutes=5)
"""How far in the past certificates start, so a client whose clock lags a little accepts them."""


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex, like ``openssl x509 -fingerprint``."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def pem(certificate: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, leaf_ec: bool | None) -> x509.KeyUsage:
    """Key usage of a leaf (EC: sign, key agreement; RSA: sign, key encipherment) or a CA (None)."""
    return x509.KeyUsage(
        digital_signature=leaf_ec is not None,
        content_commitment=False,
        key_encipherment=leaf_ec is False,
        data_encipherment=False,
        key_agreement=leaf_ec is True,
        key_cert_sign=leaf_ec is None,
        crl_sign=leaf_ec is None,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca_certificate(
    key: PrivateKey, common_name: str, now: datetime, lifetime: timedelta
) -> x509.Certificate:
    """A self-signed CA that signs only end-entity certificates (path length 0) and CRLs."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(leaf_ec=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signature_hash(key))
    )


def _ca_key_id(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_leaf_certificate(
    ca_key: PrivateKey,
    ca: x509.Certificate,
    *,
    common_name: str,
    public_key: PublicKey,
    sans: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    """An end-entity certificate with subject ``CN=common_name``, the SANs, and one extended usage.

    It starts `CLOCK_SKEW` before `now` and ends after `lifetime`, but never after the CA does.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + lifetime, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(leaf_ec=isinstance(public_key, ec.EllipticCurvePublicKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_ca_key_id(ca), critical=False)
        .sign(ca_key, signature_hash(ca_key))
    )


def build_crl(
    ca_key: PrivateKey,
    ca: x509.Certificate,
    revoked: Sequence[CertificateRecord],
    *,
    number: int,
    now: datetime,
    next_update_days: int,
) -> x509.CertificateRevocationList:
    """A CRL numbered `number` listing every record of `revoked` that has a revocation time."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + timedelta(days=next_update_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_ca_key_id(ca), critical=False)
    )
    for record in sorted(revoked, key=lambda r: r.serial):
        if record.revoked_at is None:
            continue
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(record.serial)
            .revocation_date(record.revoked_at)
        )
        # RFC 5280 5.3.1: omit the reason code rather than say "unspecified".
        if record.reason is not None and record.reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(record.reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca_key, signature_hash(ca_key))

"""The certificate authority: issue, renew and revoke certificates, and publish the CRL.

The CA lives in one directory (see `certs.layout`) that several processes may share. Its registry is
an append-only journal (`certs.registry`): issuing costs the same with 10 or 100,000 certificates
issued, and the queries (`records`, `record`, `is_revoked`, `revoked_serials`) read only what other
processes appended since the last call.

The methods block (file I/O, signing); call them from a thread in async code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import layout
from certs.csr import PublicKey, validate_csr, validate_server_csr
from certs.errors import (
    CAExistsError,
    CAInvalidError,
    CANotFoundError,
    CertificateNotFoundError,
    CertificateRejectedError,
    CSRRejectedError,
)
from certs.identity import Identity
from certs.keys import (
    KeyType,
    build_csr,
    generate_private_key,
    private_key_pem,
)
from certs.layout import CA_CERT, CRL, spki
from certs.profiles import (
    CLOCK_SKEW,
    build_crl,
    build_leaf_certificate,
    fingerprint,
    pem,
)
from certs.records import CertificateKind, CertificateRecord, Status, format_serial
from certs.registry import Registry

__all__ = ["CertificateAuthority", "Clock", "IssuedCertificate", "utc_now"]

_CRL_REFRESH_MARGIN = timedelta(days=1)

Clock: TypeAlias = Callable[[], datetime]
"""Returns the current time as an aware datetime; injectable so expiry is testable."""


def utc_now() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate just issued, its chain, and its private key if the CA generated it."""

    certificate: x509.Certificate
    certificate_pem: bytes = field(repr=False)
    chain_pem: bytes = field(repr=False)
    """The certificate followed by the CA certificate."""
    private_key_pem: bytes | None = field(repr=False)
    """The PKCS#8 PEM key if the CA generated it (servers, local operators); write it mode 0600."""
    record: CertificateRecord


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("The clock returned a naive datetime; return an aware one (e.g. UTC).")
    return moment.astimezone(UTC)


def _lifetime(validity_days: int) -> timedelta:
    if validity_days < 1:
        raise ValueError(f"validity_days must be at least 1, not {validity_days}.")
    return timedelta(days=validity_days)


def _not_found(serial: int) -> CertificateNotFoundError:
    return CertificateNotFoundError(
        f"No certificate with serial {format_serial(serial)} was issued by this CA; "
        "check the serial with `baetyl certs list`."
    )


class CertificateAuthority:
    """A CA on disk. Constructing one loads an existing CA; create one with `init`."""

    def __init__(self, directory: Path, *, now: Clock = utc_now) -> None:
        """Load the CA in `directory`; check the key's permissions and that it matches the cert."""
        self._directory = Path(directory)
        self._now = now
        self._key, self._cert = layout.load(self._directory)
        self._registry = Registry(self._directory, self._sign_crl)
        self._registry.refresh()
        if _crl_number(self.crl_path) < self._registry.crl_number:
            # Missing, unreadable, or behind the journal (a crash between the journal append and
            # the CRL write): sign it again so that every revocation recorded is published.
            self.build_crl()

    # -- creation --------------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: Path,
        *,
        common_name: str = "pybaetyl CA",
        key_type: KeyType = KeyType.EC_P256,
        validity_days: int = 3650,
        now: Clock = utc_now,
    ) -> Self:
        """Create a new CA in `directory`; raise CAExistsError rather than overwrite anything."""
        directory = Path(directory)
        layout.create(
            directory,
            common_name=common_name,
            key_type=key_type,
            lifetime=_lifetime(validity_days),
            now=_aware(now()),
        )
        return cls(directory, now=now)

    @classmethod
    def load(cls, directory: Path, *, now: Clock = utc_now) -> Self:
        """Load the CA in `directory`; raise CANotFoundError if there is none."""
        return cls(directory, now=now)

    @classmethod
    def open_or_init(
        cls,
        directory: Path,
        *,
        common_name: str = "pybaetyl CA",
        key_type: KeyType = KeyType.EC_P256,
        validity_days: int = 3650,
        now: Clock = utc_now,
    ) -> Self:
        """Load the CA in `directory`, creating it if there is none (the first `baetyl up`)."""
        try:
            return cls(directory, now=now)
        except CANotFoundError:
            pass
        try:
            return cls.init(
                directory,
                common_name=common_name,
                key_type=key_type,
                validity_days=validity_days,
                now=now,
            )
        except CAExistsError:  # another process created it meanwhile
            return cls(directory, now=now)

    # -- properties ------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The CA directory."""
        return self._directory

    @property
    def ca_path(self) -> Path:
        """The CA certificate file (what TLS peers load as their CA file)."""
        return self._directory / CA_CERT

    @property
    def crl_path(self) -> Path:
        """The CRL file, always current."""
        return self._directory / CRL

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return self._cert

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return pem(self._cert)

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the CA certificate, colon-separated hex."""
        return fingerprint(self._cert)

    # -- issuing ---------------------------------------------------------------------------------

    def issue_server(
        self,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        validity_days: int = 825,
        key_type: KeyType = KeyType.EC_P256,
    ) -> IssuedCertificate:
        """Issue a TLS server certificate (EKU serverAuth) with a key generated here."""
        if not common_name:
            raise ValueError("A server certificate needs a common name.")
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        if not sans:
            raise ValueError("A server certificate needs at least one DNS name or IP address.")
        lifetime = _lifetime(validity_days)
        key = generate_private_key(key_type)
        public_key = key.public_key()
        with self._registry.transaction(self._clock()) as txn:
            certificate = self._sign(
                common_name, public_key, sans, ExtendedKeyUsageOID.SERVER_AUTH, lifetime, txn.now
            )
            record = txn.add(certificate, CertificateKind.SERVER, None)
        return self._issued(certificate, record, private_key_pem(key))

    def issue_server_from_csr(
        self,
        csr_pem: bytes,
        common_name: str,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        validity_days: int = 825,
        accepted_common_names: Sequence[str] = (),
    ) -> IssuedCertificate:
        """Issue a TLS server certificate (EKU serverAuth) for the CSR's key, with the names the
        caller decided (a node broker's, signed by the device CA).

        `certs.csr.validate_server_csr` says what the CSR may say: a subject of ``common_name``
        (or one of `accepted_common_names`), SANs among the names given.
        """
        if not common_name:
            raise ValueError("A server certificate needs a common name.")
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
        if not sans:
            raise ValueError("A server certificate needs at least one DNS name or IP address.")
        lifetime = _lifetime(validity_days)
        csr = validate_server_csr(csr_pem, [common_name, *accepted_common_names], sans)
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CSRRejectedError("The CSR's public key is neither EC nor RSA; use an EC key.")
        with self._registry.transaction(self._clock()) as txn:
            certificate = self._sign(
                common_name, public_key, sans, ExtendedKeyUsageOID.SERVER_AUTH, lifetime, txn.now
            )
            record = txn.add(certificate, CertificateKind.SERVER, None)
        return self._issued(certificate, record, None)

    def issue_from_csr(
        self, csr_pem: bytes, identity: Identity, *, validity_days: int = 365
    ) -> IssuedCertificate:
        """Issue a client certificate (EKU clientAuth) for `identity`, which the caller decided.

        The CSR only contributes its public key; `certs.csr.validate_csr` says what it must satisfy.
        """
        lifetime = _lifetime(validity_days)
        csr = validate_csr(csr_pem, identity)
        with self._registry.transaction(self._clock()) as txn:
            certificate = self._sign_client(identity, csr, lifetime, txn.now)
            record = txn.add(certificate, CertificateKind(identity.kind.value), identity)
        return self._issued(certificate, record, None)

    def issue_operator(
        self,
        name: str,
        *,
        validity_days: int = 90,
        csr_pem: bytes | None = None,
        key_type: KeyType = KeyType.EC_P256,
    ) -> IssuedCertificate:
        """Issue an operator certificate from `csr_pem`, or with a key generated and returned."""
        return self._issue_local(Identity.operator(name), validity_days, csr_pem, key_type)

    def issue_service(
        self,
        name: str,
        *,
        validity_days: int = 365,
        csr_pem: bytes | None = None,
        key_type: KeyType = KeyType.EC_P256,
    ) -> IssuedCertificate:
        """Issue a cloud service certificate from `csr_pem`, or with a generated key returned."""
        return self._issue_local(Identity.service(name), validity_days, csr_pem, key_type)

    def renew(
        self, current_cert_pem: bytes, csr_pem: bytes, *, validity_days: int | None = None
    ) -> IssuedCertificate:
        """Issue a new certificate for the identity of a current one, from a CSR with a new key.

        The current certificate must be issued by this CA, known to the index, and neither revoked,
        superseded nor expired. It becomes `superseded` and goes on the CRL. The new certificate has
        the original lifetime unless `validity_days` is given. The CSR must use a new key.

        The current certificate is public: the caller must have authenticated the requester as its
        holder (e.g. it is the verified peer certificate of the mTLS connection of the request).
        """
        current = self._load_presented(current_cert_pem)
        with self._registry.transaction(self._clock()) as txn:
            old = txn.get(current.serial_number)
            if old is None or old.fingerprint != current.fingerprint(hashes.SHA256()).hex():
                raise CertificateRejectedError(
                    f"The certificate {format_serial(current.serial_number)} is not in this CA's "
                    "registry; renew only certificates this CA issued."
                )
            old = old.at(txn.now)
            if old.status is not Status.VALID:
                raise CertificateRejectedError(
                    f"The certificate {old.serial_hex} is {old.status}, so it cannot be renewed; "
                    "request a new certificate through activation or `baetyl certs issue`."
                )
            if old.identity is None:
                raise CertificateRejectedError(
                    f"The certificate {old.serial_hex} is a server certificate; issue a new one "
                    "with `baetyl certs issue server` instead of renewing it."
                )
            csr = validate_csr(csr_pem, old.identity)
            if spki(csr.public_key()) == spki(current.public_key()):
                raise CSRRejectedError(
                    "The CSR reuses the key of the certificate being renewed; generate a new key "
                    "for the renewal."
                )
            if validity_days is None:
                lifetime = max(old.lifetime - CLOCK_SKEW, timedelta(days=1))
            else:
                lifetime = _lifetime(validity_days)
            certificate = self._sign_client(old.identity, csr, lifetime, txn.now)
            record = txn.add(certificate, old.kind, old.identity)
            txn.supersede(old.serial, txn.now.replace(microsecond=0), record.serial)
        return self._issued(certificate, record, None)

    # -- revocation and queries ------------------------------------------------------------------

    def revoke(
        self, serial: int, reason: x509.ReasonFlags = x509.ReasonFlags.unspecified
    ) -> CertificateRecord:
        """Revoke a certificate and rewrite the CRL; revoking again keeps the first revocation.

        A superseded certificate that is revoked becomes `revoked` with the new reason (time kept).
        """
        if reason is x509.ReasonFlags.remove_from_crl:
            raise ValueError("removeFromCRL is only for delta CRLs; choose another reason.")
        with self._registry.transaction(self._clock()) as txn:
            record = txn.get(serial)
            if record is None:
                raise _not_found(serial)
            if record.status is not Status.REVOKED:
                at = record.revoked_at or txn.now.replace(microsecond=0)
                record = txn.revoke(serial, at, reason)
        return record.at(txn.now)

    def records(self) -> list[CertificateRecord]:
        """Every certificate issued, oldest first, with its status as of now."""
        now = self._clock()
        return [r.at(now) for r in sorted(self._registry.records(), key=_order)]

    def record(self, serial: int) -> CertificateRecord:
        """The record of one certificate; raise CertificateNotFoundError for an unknown serial."""
        record = self._registry.get(serial)
        if record is None:
            raise _not_found(serial)
        return record.at(self._clock())

    def is_revoked(self, serial: int) -> bool:
        """Whether `serial` is on the CRL (revoked or superseded); False for unknown serials."""
        return serial in self._registry.revoked_serials()

    def revoked_serials(self) -> frozenset[int]:
        """Every serial on the CRL; cheap to call often (reads only what was appended since)."""
        return self._registry.revoked_serials()

    def build_crl(self, next_update_days: int = 7) -> x509.CertificateRevocationList:
        """Sign a fresh CRL (with the next CRL number), write it to `crl_path` and return it."""
        with self._registry.transaction(self._clock()) as txn:
            txn.publish_crl = True
            txn.next_update_days = next_update_days
        if txn.crl is None:  # pragma: no cover - the transaction signs when publish_crl is set
            raise RuntimeError("The CRL was not built.")
        return txn.crl

    def crl_pem(self) -> bytes:
        """The current CRL as PEM; re-signed first if it expires within a day (call it daily)."""
        try:
            data = self.crl_path.read_bytes()
            next_update = x509.load_pem_x509_crl(data).next_update_utc
        except (OSError, ValueError):
            next_update = None
        if next_update is None or next_update - self._clock() < _CRL_REFRESH_MARGIN:
            return self.build_crl().public_bytes(serialization.Encoding.PEM)
        return data

    # -- internals -------------------------------------------------------------------------------

    def _clock(self) -> datetime:
        return _aware(self._now())

    def _sign_crl(
        self,
        revoked: Sequence[CertificateRecord],
        number: int,
        now: datetime,
        next_update_days: int,
    ) -> x509.CertificateRevocationList:
        return build_crl(
            self._key,
            self._cert,
            revoked,
            number=number,
            now=now,
            next_update_days=next_update_days,
        )

    def _issue_local(
        self, identity: Identity, validity_days: int, csr_pem: bytes | None, key_type: KeyType
    ) -> IssuedCertificate:
        if csr_pem is not None:
            return self.issue_from_csr(csr_pem, identity, validity_days=validity_days)
        key = generate_private_key(key_type)
        issued = self.issue_from_csr(
            build_csr(key, identity.common_name), identity, validity_days=validity_days
        )
        return dataclasses.replace(issued, private_key_pem=private_key_pem(key))

    def _load_presented(self, data: bytes) -> x509.Certificate:
        try:
            certificate = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise CertificateRejectedError(
                "The current certificate is not a readable PEM certificate; send the certificate "
                "being renewed."
            ) from exc
        try:
            certificate.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateRejectedError(
                f"The certificate {format_serial(certificate.serial_number)} was not issued by "
                "this CA; renew it with the CA that issued it, or request a new one."
            ) from exc
        return certificate

    def _sign_client(
        self,
        identity: Identity,
        csr: x509.CertificateSigningRequest,
        lifetime: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CSRRejectedError("The CSR's public key is neither EC nor RSA; use an EC key.")
        uri = [x509.UniformResourceIdentifier(identity.uri)]
        return self._sign(
            identity.common_name, public_key, uri, ExtendedKeyUsageOID.CLIENT_AUTH, lifetime, now
        )

    def _sign(
        self,
        common_name: str,
        public_key: PublicKey,
        sans: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        lifetime: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        ca_expiry = self._cert.not_valid_after_utc
        if ca_expiry <= now:
            raise CAInvalidError(
                f"The CA certificate expired on {ca_expiry:%Y-%m-%d}; create a new CA and "
                "re-enroll the nodes."
            )
        return build_leaf_certificate(
            self._key,
            self._cert,
            common_name=common_name,
            public_key=public_key,
            sans=sans,
            usage=usage,
            now=now,
            lifetime=lifetime,
        )

    def _issued(
        self, certificate: x509.Certificate, record: CertificateRecord, key_pem: bytes | None
    ) -> IssuedCertificate:
        certificate_pem = pem(certificate)
        return IssuedCertificate(
            certificate=certificate,
            certificate_pem=certificate_pem,
            chain_pem=certificate_pem + self.certificate_pem,
            private_key_pem=key_pem,
            record=record,
        )


def _order(record: CertificateRecord) -> tuple[datetime, int]:
    return (record.not_before, record.serial)


def _crl_number(path: Path) -> int:
    """The number of the CRL in `path`; 0 if it is missing or unreadable."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return 0

"""The registry of issued certificates (``index.json``) and the record of each certificate.

The file is the CA's memory: what it issued, to whom, and what it revoked. It is validated strictly
on every read; a corrupt file is reported and never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.errors import CAInvalidError, InvalidIdentityError
from certs.identity import Identity, Kind

__all__ = [
    "CertificateKind",
    "CertificateRecord",
    "Index",
    "Status",
    "format_serial",
    "parse_serial",
]

INDEX_FORMAT = "pybaetyl-ca-index"
INDEX_VERSION = 1


class Status(StrEnum):
    """Where a certificate stands; `EXPIRED` is computed from the clock, the others are stored."""

    VALID = "valid"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"
    EXPIRED = "expired"


class CertificateKind(StrEnum):
    """What a certificate was issued for: an identity kind, or a server (a TLS endpoint)."""

    NODE = "node"
    OPERATOR = "operator"
    SERVICE = "service"
    SERVER = "server"


def format_serial(serial: int) -> str:
    """Render a serial as upper-case hex without separators, as ``openssl x509 -serial`` does."""
    return f"{serial:X}"


def parse_serial(text: str) -> int:
    """Parse a serial written in hex, as `format_serial` and openssl print it.

    Accepts an optional ``0x`` prefix, ``:`` separators (``openssl x509 -text``) and either case.
    Decimal is not accepted: ``1234`` is read as hex.
    """
    digits = text.strip().replace(":", "")
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(
            f"The serial {text!r} is not hexadecimal; copy it from `baetyl certs list`."
        )
    return int(digits, 16)


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """One certificate issued by the CA, as seen at one moment (see `status`)."""

    serial: int
    kind: CertificateKind
    common_name: str
    identity: Identity | None
    """The client identity; None for server certificates."""
    subject: str
    """The subject as an RFC 4514 string."""
    not_before: datetime
    not_after: datetime
    fingerprint: str
    """SHA-256 of the DER certificate, lower-case hex."""
    status: Status
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None
    superseded_by: int | None = field(default=None)

    @property
    def serial_hex(self) -> str:
        """The serial number as upper-case hex (what the CLI prints and accepts)."""
        return format_serial(self.serial)

    @property
    def lifetime(self) -> timedelta:
        """The certificate's validity period."""
        return self.not_after - self.not_before

    @property
    def on_crl(self) -> bool:
        """Whether the serial belongs on the CRL (revoked or superseded, expired or not)."""
        return self.revoked_at is not None

    def at(self, now: datetime) -> Self:
        """Return this record with `status` as of `now` (valid past `not_after` means expired)."""
        if self.status is Status.VALID and now >= self.not_after:
            return dataclasses.replace(self, status=Status.EXPIRED)
        return self

    @classmethod
    def issued(
        cls,
        certificate: x509.Certificate,
        kind: CertificateKind,
        identity: Identity | None,
        common_name: str,
    ) -> Self:
        """The record of a certificate just issued."""
        return cls(
            serial=certificate.serial_number,
            kind=kind,
            common_name=common_name,
            identity=identity,
            subject=certificate.subject.rfc4514_string(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
            status=Status.VALID,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as stored in ``index.json``."""
        return {
            "serial": format_serial(self.serial),
            "kind": self.kind.value,
            "common_name": self.common_name,
            "identity": None if self.identity is None else self.identity.uri,
            "subject": self.subject,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "fingerprint": self.fingerprint,
            "status": self.status.value,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "reason": None if self.reason is None else self.reason.value,
            "superseded_by": (
                None if self.superseded_by is None else format_serial(self.superseded_by)
            ),
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        """Parse and validate one stored record; raise ValueError, KeyError or TypeError if bad."""
        if not isinstance(data, dict):
            raise TypeError("a record is not an object")
        kind = CertificateKind(_str(data, "kind"))
        uri = data["identity"]
        identity = None if uri is None else Identity.from_uri(_str(data, "identity"))
        if identity is None:
            agrees = kind is CertificateKind.SERVER
        else:
            agrees = (
                kind is not CertificateKind.SERVER
                and identity.kind is Kind(kind.value)
                and identity.common_name == _str(data, "common_name")
            )
        if not agrees:
            raise ValueError(f"record {data.get('serial')!r} has an identity that disagrees")
        status = Status(_str(data, "status"))
        revoked_at = _optional_time(data, "revoked_at")
        reason = None if data["reason"] is None else x509.ReasonFlags(_str(data, "reason"))
        if status is Status.EXPIRED or (status is Status.VALID) != (revoked_at is None):
            raise ValueError(f"record {data.get('serial')!r} has an inconsistent status")
        superseded = data["superseded_by"]
        return cls(
            serial=int(_str(data, "serial"), 16),
            kind=kind,
            common_name=_str(data, "common_name"),
            identity=identity,
            subject=_str(data, "subject"),
            not_before=_time(data, "not_before"),
            not_after=_time(data, "not_after"),
            fingerprint=_str(data, "fingerprint"),
            status=status,
            revoked_at=revoked_at,
            reason=reason,
            superseded_by=None if superseded is None else int(_str(data, "superseded_by"), 16),
        )


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _time(data: Mapping[str, object], key: str) -> datetime:
    value = datetime.fromisoformat(_str(data, key))
    if value.tzinfo is None:
        raise ValueError(f"{key} has no time zone")
    return value


def _optional_time(data: Mapping[str, object], key: str) -> datetime | None:
    return None if data[key] is None else _time(data, key)


@dataclass(frozen=True, slots=True)
class Index:
    """The whole registry: every record by serial, and the number of the last CRL issued."""

    records: Mapping[int, CertificateRecord] = field(default_factory=lambda: MappingProxyType({}))
    crl_number: int = 0

    def with_record(self, record: CertificateRecord) -> Index:
        """Return a copy with `record` added or replaced."""
        records = dict(self.records)
        records[record.serial] = record
        return Index(MappingProxyType(records), self.crl_number)

    def with_next_crl_number(self) -> Index:
        """Return a copy whose CRL number is one more."""
        return Index(self.records, self.crl_number + 1)

    def dumps(self) -> bytes:
        """Serialize for ``index.json``."""
        document = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "crl_number": self.crl_number,
            "certificates": [r.to_json() for r in sorted(self.records.values(), key=_order)],
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    @classmethod
    def load(cls, path: Path) -> Index:
        """Read and validate ``index.json``; raises CAInvalidError, never repairs the file."""
        try:
            document = json.loads(path.read_bytes())
            if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
                raise ValueError(f"it is not a {INDEX_FORMAT} file")
            if document.get("version") != INDEX_VERSION:
                raise ValueError(f"version {document.get('version')!r} is not {INDEX_VERSION}")
            crl_number = document["crl_number"]
            if not isinstance(crl_number, int) or crl_number < 0:
                raise ValueError("crl_number is not a non-negative integer")
            entries = document["certificates"]
            if not isinstance(entries, list):
                raise TypeError("certificates is not a list")
            records: dict[int, CertificateRecord] = {}
            for entry in entries:
                record = CertificateRecord.from_json(entry)
                if record.serial in records:
                    raise ValueError(f"serial {record.serial_hex} appears twice")
                records[record.serial] = record
        except FileNotFoundError:
            raise CAInvalidError(
                f"The CA index {path} is missing; restore it from a backup (the CA cannot track "
                "revocations without it)."
            ) from None
        except (OSError, ValueError, KeyError, TypeError, InvalidIdentityError) as exc:
            raise CAInvalidError(
                f"The CA index {path} is corrupt ({exc}); restore it from a backup. "
                "It was left untouched."
            ) from exc
        return cls(MappingProxyType(records), crl_number)


def _order(record: CertificateRecord) -> tuple[datetime, int]:
    return (record.not_before, record.serial)

"""The CA's journal (``index.jsonl``): the record of each certificate and the events that change it.

The journal is the CA's memory: what it issued, to whom, and what it revoked. It is a JSON-lines
file that is only ever appended to. The first line is a header naming the format and its version;
every other line is one *commit*, written whole by one ``write`` and applied all or nothing::

    {"format":"pybaetyl-ca-journal","version":1}
    {"at":"...","events":[{"event":"crl","number":1}]}
    {"at":"...","events":[{"event":"issued","record":{"serial":"5F3A...","kind":"node",...}}]}
    {"at":"...","events":[{"event":"issued","record":{...}},
                          {"event":"superseded","serial":"5F3A...","at":"...","by":"1C0D..."},
                          {"event":"crl","number":2}]}          (a renewal, on one line)
    {"at":"...","events":[{"event":"revoked","serial":"1C0D...","at":"...","reason":"keyCompromise"},
                          {"event":"crl","number":3}]}

Replaying the commits in order gives the `State`: every record by serial and the number of the last
CRL signed. Each line is validated strictly (its JSON, every field, and that its events make sense
against the state so far: no serial issued twice, no revocation of an unknown serial, CRL numbers
increasing); `certs.registry` reports a bad line as corrupt and never rewrites the file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certs.identity import Identity, Kind

__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_VERSION",
    "CertificateKind",
    "CertificateRecord",
    "CrlPublished",
    "Delta",
    "Event",
    "Issued",
    "Revoked",
    "State",
    "Status",
    "Superseded",
    "decode_commit",
    "decode_header",
    "encode_commit",
    "encode_header",
    "format_serial",
    "parse_serial",
]

JOURNAL_FORMAT = "pybaetyl-ca-journal"
JOURNAL_VERSION = 1


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
    DEVICE = "device"
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
        """The record as stored in an ``issued`` event of the journal."""
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
            serial=_serial(data, "serial"),
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
            superseded_by=None if superseded is None else _serial(data, "superseded_by"),
        )


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _serial(data: Mapping[str, object], key: str) -> int:
    text = _str(data, key)
    if not text or text.strip("0123456789ABCDEF"):
        raise ValueError(f"{key} {text!r} is not upper-case hexadecimal")
    return int(text, 16)


def _time(data: Mapping[str, object], key: str) -> datetime:
    value = datetime.fromisoformat(_str(data, key))
    if value.tzinfo is None:
        raise ValueError(f"{key} has no time zone")
    return value


def _optional_time(data: Mapping[str, object], key: str) -> datetime | None:
    return None if data[key] is None else _time(data, key)


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate was issued; `record` is its full record (status valid)."""

    record: CertificateRecord


@dataclass(frozen=True, slots=True)
class Revoked:
    """A certificate was revoked (or a superseded one revoked again: its time is kept in `at`)."""

    serial: int
    at: datetime
    reason: x509.ReasonFlags


@dataclass(frozen=True, slots=True)
class Superseded:
    """A certificate was renewed: `by` is its successor's serial (issued in the same commit)."""

    serial: int
    at: datetime
    by: int


@dataclass(frozen=True, slots=True)
class CrlPublished:
    """A CRL numbered `number` was signed (with every record on the CRL at that point)."""

    number: int


Event = Issued | Revoked | Superseded | CrlPublished


def _event_to_json(event: Event) -> dict[str, Any]:
    match event:
        case Issued(record):
            return {"event": "issued", "record": record.to_json()}
        case Revoked(serial, at, reason):
            return {
                "event": "revoked",
                "serial": format_serial(serial),
                "at": at.isoformat(),
                "reason": reason.value,
            }
        case Superseded(serial, at, by):
            return {
                "event": "superseded",
                "serial": format_serial(serial),
                "at": at.isoformat(),
                "by": format_serial(by),
            }
        case CrlPublished(number):
            return {"event": "crl", "number": number}


def _event_from_json(data: object) -> Event:
    if not isinstance(data, dict):
        raise TypeError("an event is not an object")
    match data["event"]:
        case "issued":
            record = CertificateRecord.from_json(data["record"])
            if record.status is not Status.VALID:
                raise ValueError(f"certificate {record.serial_hex} is issued {record.status}")
            return Issued(record)
        case "revoked":
            reason = x509.ReasonFlags(_str(data, "reason"))
            if reason is x509.ReasonFlags.remove_from_crl:
                raise ValueError("removeFromCRL is not a revocation reason here")
            return Revoked(_serial(data, "serial"), _time(data, "at"), reason)
        case "superseded":
            return Superseded(_serial(data, "serial"), _time(data, "at"), _serial(data, "by"))
        case "crl":
            number = data["number"]
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError("a CRL number is not a positive integer")
            return CrlPublished(number)
        case other:
            raise ValueError(f"unknown event {other!r}")


def encode_header() -> bytes:
    """The journal's first line."""
    return _line({"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION})


def decode_header(line: bytes) -> None:
    """Check the journal's first line (without its newline); raise ValueError if it is not ours."""
    document = json.loads(line)
    if not isinstance(document, dict) or document.get("format") != JOURNAL_FORMAT:
        raise ValueError(f"it is not a {JOURNAL_FORMAT} file")
    if document.get("version") != JOURNAL_VERSION:
        raise ValueError(f"version {document.get('version')!r} is not {JOURNAL_VERSION}")


def encode_commit(at: datetime, events: list[Event]) -> bytes:
    """One commit as a journal line, newline included (JSON escapes any newline in the values)."""
    return _line({"at": at.isoformat(), "events": [_event_to_json(e) for e in events]})


def decode_commit(line: bytes) -> list[Event]:
    """Parse one commit line (without its newline).

    Raises ValueError, KeyError, TypeError or InvalidIdentityError if anything in it is malformed.
    """
    document = json.loads(line)
    if not isinstance(document, dict):
        raise TypeError("a commit is not an object")
    _time(document, "at")
    events = document["events"]
    if not isinstance(events, list) or not events:
        raise TypeError("events is not a non-empty list")
    return [_event_from_json(event) for event in events]


def _line(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, separators=(",", ":")) + "\n").encode()


# -- state -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Delta:
    """Events staged against a `State` and what they change, to be committed all at once."""

    events: list[Event] = field(default_factory=list)
    changes: dict[int, CertificateRecord] = field(default_factory=dict)
    crl_number: int | None = None


class State:
    """The registry in memory: every record by serial, the records on the CRL, the CRL number.

    Changes go through `stage` (which validates an event against the state and the delta so far)
    and `commit`, so a commit that fails validation leaves the state as it was. Not thread-safe:
    `certs.registry.Registry` serializes access.
    """

    def __init__(self) -> None:
        self._records: dict[int, CertificateRecord] = {}
        self._on_crl: dict[int, CertificateRecord] = {}
        self._revoked: frozenset[int] | None = frozenset()
        self.crl_number = 0

    @property
    def records(self) -> Mapping[int, CertificateRecord]:
        """Every record by serial (a read-only view of the live dict)."""
        return MappingProxyType(self._records)

    def get(self, serial: int, delta: Delta | None = None) -> CertificateRecord | None:
        """The record of `serial`, as changed by `delta` if given."""
        if delta is not None and serial in delta.changes:
            return delta.changes[serial]
        return self._records.get(serial)

    def on_crl(self) -> list[CertificateRecord]:
        """The records that belong on the CRL (revoked or superseded): O(their number)."""
        return list(self._on_crl.values())

    def revoked_serials(self) -> frozenset[int]:
        """The serials on the CRL; cached until the next commit that adds one."""
        if self._revoked is None:
            self._revoked = frozenset(self._on_crl)
        return self._revoked

    def stage(self, delta: Delta, event: Event) -> CertificateRecord | None:
        """Validate `event` against the state and `delta`, add it to `delta`; raise ValueError.

        Returns the record the event creates or changes (None for a CRL).
        """
        match event:
            case Issued(record):
                if self.get(record.serial, delta) is not None:
                    raise ValueError(f"serial {record.serial_hex} is issued twice")
                changed = record
            case Revoked(serial, at, reason):
                changed = dataclasses.replace(
                    self._existing(serial, delta),
                    status=Status.REVOKED,
                    revoked_at=at,
                    reason=reason,
                )
            case Superseded(serial, at, by):
                current = self._existing(serial, delta)
                if current.status is not Status.VALID:
                    raise ValueError(
                        f"serial {current.serial_hex} is superseded while {current.status}"
                    )
                self._existing(by, delta)
                changed = dataclasses.replace(
                    current,
                    status=Status.SUPERSEDED,
                    revoked_at=at,
                    reason=x509.ReasonFlags.superseded,
                    superseded_by=by,
                )
            case CrlPublished(number):
                last = self.crl_number if delta.crl_number is None else delta.crl_number
                if number <= last:
                    raise ValueError(f"CRL number {number} does not follow {last}")
                delta.crl_number = number
                delta.events.append(event)
                return None
        delta.changes[changed.serial] = changed
        delta.events.append(event)
        return changed

    def commit(self, delta: Delta) -> None:
        """Apply a staged delta (which `stage` validated: this cannot fail)."""
        for serial, record in delta.changes.items():
            self._records[serial] = record
            if record.on_crl:
                if serial not in self._on_crl:
                    self._revoked = None
                self._on_crl[serial] = record
        if delta.crl_number is not None:
            self.crl_number = delta.crl_number

    def apply(self, events: list[Event]) -> None:
        """Stage and commit the events of one commit line, all or nothing."""
        delta = Delta()
        for event in events:
            self.stage(delta, event)
        self.commit(delta)

    def _existing(self, serial: int, delta: Delta) -> CertificateRecord:
        record = self.get(serial, delta)
        if record is None:
            raise ValueError(f"serial {format_serial(serial)} was never issued")
        return record

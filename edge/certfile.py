"""What the agent watches of its certificate, read without ``cryptography``.

The agent checks its certificate at start and every renewal interval: its serial (which one the
session uses) and its validity (whether renewal is due), and the files a renewal leaves in the
state directory. Loading ``cryptography`` for that would keep about 10 MiB in an agent at rest,
so this reads the few DER fields it needs (RFC 5280, section 4.1: ``tbsCertificate``'s
``serialNumber`` and ``validity``) by itself; ``edge.renewal`` loads ``cryptography`` when there
is a renewal to do.

::

    <state dir>/node.key.new         a renewal's new key, before the swap
    <state dir>/node.crt.new         its new certificate, before the swap
    <state dir>/node.crt.previous    the certificate a renewal replaced, until the cloud retires it
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

__all__ = [
    "DEFAULT_THRESHOLD",
    "NEW_CERT_FILE",
    "NEW_KEY_FILE",
    "PREVIOUS_CERT_FILE",
    "CertificateInfo",
    "Validity",
    "parse_certificate",
    "read_certificate",
    "renewal_due",
    "serial_of",
]

DEFAULT_THRESHOLD: Final = 0.3
"""Renew when less than this part of the certificate's lifetime is left."""
NEW_KEY_FILE: Final = "node.key.new"
NEW_CERT_FILE: Final = "node.crt.new"
PREVIOUS_CERT_FILE: Final = "node.crt.previous"

_BEGIN: Final = b"-----BEGIN CERTIFICATE-----"
_END: Final = b"-----END CERTIFICATE-----"
_SEQUENCE, _INTEGER, _VERSION = 0x30, 0x02, 0xA0
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18


class Validity(Protocol):
    """A certificate's validity period, as ``cryptography``'s ``x509.Certificate`` has it."""

    @property
    def not_valid_before_utc(self) -> datetime: ...

    @property
    def not_valid_after_utc(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The serial number and validity of a certificate (names as in ``cryptography``)."""

    serial_number: int
    not_valid_before_utc: datetime
    not_valid_after_utc: datetime


def renewal_due(certificate: Validity, *, now: datetime, threshold: float) -> bool:
    """Whether less than ``threshold`` (0..1) of ``certificate``'s lifetime is left at ``now``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold}.")
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return end - now < (end - start) * threshold


def read_certificate(path: Path) -> CertificateInfo:
    """The first certificate of the PEM file ``path``; OSError or ValueError if it has none."""
    return parse_certificate(path.read_bytes())


def serial_of(path: Path) -> int:
    """The serial of the certificate in ``path``; 0 if it cannot be read."""
    try:
        return read_certificate(path).serial_number
    except (OSError, ValueError):
        return 0


def parse_certificate(pem: bytes) -> CertificateInfo:
    """The first certificate of ``pem``; ValueError if it holds no well-formed one."""
    begin = pem.find(_BEGIN)
    end = pem.find(_END, begin)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate found")
    try:
        der = binascii.a2b_base64(pem[begin + len(_BEGIN) : end])
    except binascii.Error as exc:
        raise ValueError(f"the PEM certificate is not valid base64 ({exc})") from None
    _, start, _ = _element(der, 0, _SEQUENCE)  # Certificate
    _, position, _ = _element(der, start, _SEQUENCE)  # tbsCertificate
    tag, start, end = _element(der, position)
    if tag == _VERSION:  # [0] EXPLICIT, absent in v1 certificates
        tag, start, end = _element(der, end)
    if tag != _INTEGER or start == end:
        raise ValueError("the certificate has no serial number where DER puts it")
    serial = int.from_bytes(der[start:end], "big", signed=True)
    _, _, end = _element(der, end, _SEQUENCE)  # signature algorithm
    _, _, end = _element(der, end, _SEQUENCE)  # issuer
    _, start, _ = _element(der, end, _SEQUENCE)  # validity
    not_before, start = _time(der, start)
    not_after, _ = _time(der, start)
    return CertificateInfo(serial, not_before, not_after)


def _element(der: bytes, offset: int, expected: int | None = None) -> tuple[int, int, int]:
    """The DER element at ``offset``: its tag, where its value starts and where it ends."""
    if offset + 2 > len(der):
        raise ValueError("the certificate's DER is truncated")
    tag, length = der[offset], der[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or offset + count > len(der):
            raise ValueError("the certificate's DER has a bad length")
        length = int.from_bytes(der[offset : offset + count], "big")
        offset += count
    if offset + length > len(der):
        raise ValueError("the certificate's DER is truncated")
    if expected is not None and tag != expected:
        raise ValueError(f"the certificate's DER has tag {tag:#x} where {expected:#x} belongs")
    return tag, offset, offset + length


def _time(der: bytes, offset: int) -> tuple[datetime, int]:
    """The UTCTime or GeneralizedTime at ``offset`` (RFC 5280: UTC, seconds, ``Z``); its end."""
    tag, start, end = _element(der, offset)
    text = der[start:end].decode("ascii", errors="replace")
    unreadable = ValueError(f"the certificate's validity holds no time it can read ({text!r})")
    if tag == _UTC_TIME and len(text) == 13 and text[:2].isdigit():
        century = "19" if int(text[:2]) >= 50 else "20"  # RFC 5280, 4.1.2.5.1
        text = century + text
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise unreadable
    try:
        moment = datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise unreadable from None
    return moment, end

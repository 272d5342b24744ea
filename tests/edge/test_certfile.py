"""``edge.certfile``: the serial and validity the agent reads without cryptography."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.certfile import CertificateInfo, parse_certificate, read_certificate, renewal_due

KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "default.gw-1")])


def certificate(serial: int, not_before: datetime, not_after: datetime) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(KEY.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(KEY, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# cryptography writes UTCTime up to 2049 and GeneralizedTime from 2050 (RFC 5280), so the range
# covers both encodings and the 1950/2049 edges of UTCTime's two-digit years.
moments = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=0))


@settings(max_examples=150, deadline=None)
@given(serial=st.integers(min_value=1, max_value=2**159 - 1), start=moments, end=moments)
def test_reads_what_cryptography_reads(serial: int, start: datetime, end: datetime) -> None:
    """Serial and validity match cryptography's reading, whatever the encoding of the times."""
    start, end = min(start, end), max(start, end)
    cert = certificate(serial, start, end)
    info = parse_certificate(pem(cert))
    assert info == CertificateInfo(
        cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc
    )


def test_reads_the_first_certificate_of_a_chain(tmp_path: Path) -> None:
    """A chain file (node certificate, then CA) gives the node's certificate, as TLS uses it."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    node, ca = certificate(7, start, start + timedelta(days=90)), certificate(1, start, start)
    path = tmp_path / "node.crt"
    path.write_bytes(pem(node) + pem(ca))
    assert read_certificate(path).serial_number == 7


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",  # an empty SEQUENCE
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",  # truncated
    ],
)
def test_malformed_input_is_a_value_error(text: bytes) -> None:
    """What holds no well-formed certificate is refused with ValueError, never misread."""
    with pytest.raises(ValueError, match="certificate"):
        parse_certificate(text)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=400), junk=st.binary(max_size=40))
def test_damaged_certificates_raise_only_value_error(cut: int, junk: bytes) -> None:
    """A certificate cut short or with bytes changed raises ValueError, nothing else."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    der = certificate(42, start, start + timedelta(days=365)).public_bytes(
        serialization.Encoding.DER
    )
    damaged = der[:cut] + junk + der[cut + len(junk) :]
    text = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(damaged)
    text += b"-----END CERTIFICATE-----\n"
    with contextlib.suppress(ValueError):
        parse_certificate(text)


def test_renewal_due_works_on_either_reading() -> None:
    """The due check takes cryptography's certificate and this module's reading alike."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = certificate(3, start, start + timedelta(days=100))
    for reading in (cert, parse_certificate(pem(cert))):
        assert not renewal_due(reading, now=start + timedelta(days=69), threshold=0.3)
        assert renewal_due(reading, now=start + timedelta(days=71), threshold=0.3)


def test_importing_it_loads_no_cryptography() -> None:
    """The module the agent checks its certificate with does not load cryptography."""
    code = "import sys, edge.certfile; print('cryptography' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"

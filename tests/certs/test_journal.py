"""The CA journal (``index.jsonl``): appended, never rewritten; tailed by readers; crash-safe."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certs import (
    CAInvalidError,
    CertificateAuthority,
    CertificateRejectedError,
    Identity,
    IssuedCertificate,
    Status,
)
from certs.records import CertificateRecord
from certs.registry import Registry
from tests.certs.helpers import new_csr

NODE = Identity.node("acme", "gw-1")


def _journal(ca: CertificateAuthority) -> Path:
    return ca.directory / "index.jsonl"


def _no_crl(
    records: object, number: int, now: datetime, days: int
) -> x509.CertificateRevocationList:  # pragma: no cover - the tests' registries never sign
    raise AssertionError("a read-only registry signed a CRL")


def _crl_number(ca: CertificateAuthority) -> int:
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _crl_serials(ca: CertificateAuthority) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(ca.crl_path.read_bytes())}


def test_issuing_appends_one_line_and_never_rewrites(ca: CertificateAuthority) -> None:
    """Each issuance, revocation or renewal appends one line; earlier bytes and the inode stay."""
    journal = _journal(ca)
    first = ca.issue_from_csr(new_csr()[1], NODE)
    operations: list[Callable[[], object]] = [
        lambda: ca.issue_from_csr(new_csr()[1], Identity.node("acme", "gw-2")),
        lambda: ca.issue_server("localhost", dns_names=["localhost"]),
        lambda: ca.renew(first.certificate_pem, new_csr()[1]),
        lambda: ca.revoke(first.record.serial, x509.ReasonFlags.key_compromise),
        ca.build_crl,
    ]
    for operation in operations:
        before, inode = journal.read_bytes(), journal.stat().st_ino
        operation()
        after = journal.read_bytes()
        assert journal.stat().st_ino == inode
        assert after.startswith(before)
        assert after[len(before) :].count(b"\n") == 1
        assert after.endswith(b"\n")


def test_revoking_again_appends_nothing(ca: CertificateAuthority) -> None:
    """A revocation that changes nothing (already revoked) leaves the journal and CRL alone."""
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    ca.revoke(serial)
    before, crl = _journal(ca).read_bytes(), ca.crl_path.read_bytes()
    ca.revoke(serial, x509.ReasonFlags.key_compromise)
    assert _journal(ca).read_bytes() == before
    assert ca.crl_path.read_bytes() == crl


def test_a_renewal_is_one_commit(ca: CertificateAuthority) -> None:
    """The new record, the supersession and the CRL number of a renewal are on one line."""
    old = ca.issue_from_csr(new_csr()[1], NODE)
    new = ca.renew(old.certificate_pem, new_csr()[1])
    commit = json.loads(_journal(ca).read_text().splitlines()[-1])
    assert [e["event"] for e in commit["events"]] == ["issued", "superseded", "crl"]
    assert commit["events"][1]["by"] == new.record.serial_hex
    assert commit["events"][2]["number"] == _crl_number(ca)


def test_a_reader_parses_only_what_was_appended(ca: CertificateAuthority) -> None:
    """A running reader reads the new lines only; polling an unchanged journal reads nothing."""
    reader = Registry(ca.directory, _no_crl)
    assert reader.records() == []
    assert reader.loads == 1
    start = reader.position
    assert start == _journal(ca).stat().st_size

    issued = [ca.issue_from_csr(new_csr()[1], NODE) for _ in range(3)]
    appended = _journal(ca).stat().st_size - start
    assert {r.serial for r in reader.records()} == {i.record.serial for i in issued}
    assert reader.position == start + appended
    assert reader.revoked_serials() == frozenset()

    CertificateAuthority.load(ca.directory).revoke(issued[1].record.serial)
    assert reader.revoked_serials() == {issued[1].record.serial}
    revoked = reader.get(issued[1].record.serial)
    assert revoked is not None
    assert revoked.status is Status.REVOKED
    assert reader.loads == 1  # never read from the start again
    assert reader.position == _journal(ca).stat().st_size
    assert reader.revoked_serials() is reader.revoked_serials()  # cached while nothing changes


def test_a_replaced_journal_is_read_again(ca: CertificateAuthority) -> None:
    """A journal replaced by another file (a restored backup) is read from its start."""
    journal = _journal(ca)
    backup = journal.read_bytes()
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    reader = Registry(ca.directory, _no_crl)
    assert reader.get(serial) is not None
    restored = journal.with_name("restored")
    restored.write_bytes(backup)
    restored.replace(journal)
    assert reader.get(serial) is None
    assert reader.loads == 2


def test_a_torn_last_line_is_ignored_then_cut_off(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-append leaves half a line: readers ignore it, the next writer cuts it off."""
    journal = _journal(ca)
    kept = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    committed = journal.read_bytes()
    # What a crash in the middle of the next append leaves: the start of a line, no newline.
    line = ca.issue_from_csr(new_csr()[1], NODE)  # a real line, to cut in half
    whole = journal.read_bytes()
    lost = line.record.serial
    journal.write_bytes(whole[: len(committed) + (len(whole) - len(committed)) // 2])
    inode = journal.stat().st_ino

    fresh = CertificateAuthority.load(ca.directory)  # reading neither fails nor repairs
    assert [r.serial for r in fresh.records()] == [kept]
    assert journal.read_bytes().startswith(committed)
    assert len(journal.read_bytes()) > len(committed)

    with caplog.at_level(logging.WARNING, logger="certs.registry"):
        serial = fresh.issue_from_csr(new_csr()[1], NODE).record.serial
    assert "incomplete line" in caplog.text
    assert str(journal) in caplog.text
    data = journal.read_bytes()
    assert data.startswith(committed)
    assert data[len(committed) :].count(b"\n") == 1  # the torn bytes are gone, one new line
    assert journal.stat().st_ino == inode
    again = CertificateAuthority.load(ca.directory)
    assert {r.serial for r in again.records()} == {kept, serial}
    assert lost not in {r.serial for r in again.records()}


def test_a_torn_line_without_the_header_is_corrupt(ca: CertificateAuthority) -> None:
    """Only a line after a valid header can be a torn append; a torn header is corruption."""
    journal = _journal(ca)
    journal.write_bytes(b'{"format":"pybaetyl-ca-jour')
    with pytest.raises(CAInvalidError, match="corrupt at line 1"):
        CertificateAuthority.load(ca.directory)
    assert journal.read_bytes() == b'{"format":"pybaetyl-ca-jour'


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"{not json", "Expecting property name"),
        (b'{"at":"2024-01-01T00:00:00+00:00","events":[]}', "events"),
        (b'{"at":"2024-01-01T00:00:00+00:00","events":[{"event":"crl","number":1}]}', "CRL"),
        (
            b'{"at":"2024-01-01T00:00:00+00:00","events":[{"event":"revoked","serial":"ABC",'
            b'"at":"2024-01-01T00:00:00+00:00","reason":"keyCompromise"}]}',
            "never issued",
        ),
        (b'{"events":[{"event":"crl","number":99}]}', "'at' is missing"),
        (b'{"at":"2024-01-01T00:00:00+00:00","events":[{"event":"merged"}]}', "unknown event"),
    ],
)
def test_a_bad_middle_line_is_corruption(
    ca: CertificateAuthority, garbage: bytes, reason: str
) -> None:
    """A complete line that is not a valid commit raises CAInvalidError naming file and line."""
    for _ in range(3):
        ca.issue_from_csr(new_csr()[1], NODE)
    journal = _journal(ca)
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5  # header, first CRL, three issuances
    lines[3] = garbage + b"\n"
    journal.write_bytes(b"".join(lines))
    before = journal.read_bytes()
    with pytest.raises(CAInvalidError, match="corrupt at line 4") as error:
        CertificateAuthority.load(ca.directory)
    assert str(journal) in str(error.value)
    assert reason in str(error.value)
    # The running instance sees the edit too (the file no longer continues where it had read to).
    with pytest.raises(CAInvalidError, match="corrupt at line 4"):
        ca.issue_from_csr(new_csr()[1], NODE)
    assert journal.read_bytes() == before


def test_a_bad_last_complete_line_is_corruption_not_a_torn_write(
    ca: CertificateAuthority,
) -> None:
    """Garbage that ends with a newline is never taken for a crash leftover, nor cut off."""
    journal = _journal(ca)
    with journal.open("ab") as file:
        file.write(b'{"at":"x"}\n')
    before = journal.read_bytes()
    with pytest.raises(CAInvalidError, match="corrupt at line 3"):
        ca.issue_from_csr(new_csr()[1], NODE)
    with pytest.raises(CAInvalidError, match="corrupt at line 3"):
        CertificateAuthority.load(ca.directory)
    assert journal.read_bytes() == before


def test_a_missing_journal_is_reported(ca: CertificateAuthority) -> None:
    """Without its journal the CA cannot be loaded; the message says to restore it."""
    _journal(ca).unlink()
    with pytest.raises(CAInvalidError, match=r"index\.jsonl is missing; restore it"):
        CertificateAuthority.load(ca.directory)
    with pytest.raises(CAInvalidError, match="missing"):
        ca.records()


def test_a_crl_behind_the_journal_is_signed_again_on_load(ca: CertificateAuthority) -> None:
    """A crash after the journal append but before the CRL write is repaired at the next load."""
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    stale = ca.crl_path.read_bytes()
    ca.revoke(serial)
    number = _crl_number(ca)
    ca.crl_path.write_bytes(stale)  # as if the process died before writing crl.pem
    CertificateAuthority.load(ca.directory)
    assert serial in _crl_serials(ca)
    assert _crl_number(ca) == number + 1


def test_crl_numbers_continue_across_instances(ca: CertificateAuthority) -> None:
    """CRL numbers come from the journal, so two instances never sign the same number."""
    other = CertificateAuthority.load(ca.directory)
    numbers = []
    for authority in (ca, other, ca, other):
        crl = authority.build_crl()
        numbers.append(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    assert numbers == list(range(numbers[0], numbers[0] + 4))


def test_stored_records_round_trip(ca: CertificateAuthority) -> None:
    """What another process reads back equals what the writer holds in memory."""
    issued = ca.issue_from_csr(new_csr()[1], NODE)
    server = ca.issue_server("localhost", dns_names=["localhost"])
    renewed = ca.renew(issued.certificate_pem, new_csr()[1])
    ca.revoke(server.record.serial, x509.ReasonFlags.cessation_of_operation)
    ca.revoke(issued.record.serial, x509.ReasonFlags.key_compromise)
    assert CertificateAuthority.load(ca.directory).records() == ca.records()
    old = ca.record(issued.record.serial)
    assert old.status is Status.REVOKED
    assert old.superseded_by == renewed.record.serial  # revoking keeps the supersession
    assert old.reason is x509.ReasonFlags.key_compromise


# -- two instances interleaving -------------------------------------------------------------------


@dataclass
class _Model:
    """What the registry must hold after a sequence of operations."""

    issued: list[IssuedCertificate] = field(default_factory=list)
    status: dict[int, Status] = field(default_factory=dict)


_OPERATION = st.tuples(
    st.sampled_from(["issue", "revoke", "renew"]), st.integers(0, 1), st.integers(0, 50)
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(_OPERATION, min_size=1, max_size=12))
def test_two_instances_interleaving_agree(operations: list[tuple[str, int, int]]) -> None:
    """Issues, revocations and renewals through two instances leave both with the same records."""
    with tempfile.TemporaryDirectory() as tmp:
        first = CertificateAuthority.init(Path(tmp) / "ca")
        instances = [first, CertificateAuthority.load(first.directory)]
        model = _Model()
        crl_number = _crl_number(first)
        for name, which, pick in operations:
            authority = instances[which]
            if name == "issue" or not model.issued:
                issued = authority.issue_from_csr(new_csr()[1], NODE)
                model.issued.append(issued)
                model.status[issued.record.serial] = Status.VALID
                continue
            target = model.issued[pick % len(model.issued)]
            serial = target.record.serial
            if name == "revoke":
                authority.revoke(serial)
                if model.status[serial] is Status.REVOKED:
                    assert _crl_number(first) == crl_number  # nothing changed, nothing signed
                    continue
                model.status[serial] = Status.REVOKED
            elif model.status[serial] is Status.VALID:
                renewed = authority.renew(target.certificate_pem, new_csr()[1])
                model.issued.append(renewed)
                model.status[serial] = Status.SUPERSEDED
                model.status[renewed.record.serial] = Status.VALID
            else:
                with pytest.raises(CertificateRejectedError):
                    authority.renew(target.certificate_pem, new_csr()[1])
                continue
            assert _crl_number(first) == crl_number + 1  # every change publishes the next CRL
            crl_number += 1
        views = [instances[0].records(), instances[1].records()]
        views.append(CertificateAuthority.load(first.directory).records())
        assert views[0] == views[1] == views[2]
        assert {r.serial: r.status for r in views[0]} == model.status
        on_crl = {s for s, status in model.status.items() if status is not Status.VALID}
        assert instances[0].revoked_serials() == instances[1].revoked_serials() == on_crl
        assert _crl_serials(first) == on_crl
        assert all(instances[1].is_revoked(s) == (s in on_crl) for s in model.status)


def test_many_appends_from_two_instances_read_incrementally(ca: CertificateAuthority) -> None:
    """Forty alternating issuances: each instance catches up on the other's lines, never reloads."""
    other = CertificateAuthority.load(ca.directory)
    reader = Registry(ca.directory, _no_crl)
    reader.refresh()
    serials: list[int] = []
    for i in range(40):
        authority = (ca, other)[i % 2]
        serials.append(authority.issue_from_csr(new_csr()[1], NODE).record.serial)
        seen: list[CertificateRecord] = reader.records()
        assert len(seen) == i + 1
    assert reader.loads == 1
    assert reader.position == _journal(ca).stat().st_size == os.path.getsize(_journal(other))
    assert [r.serial for r in ca.records()] == [r.serial for r in other.records()]
    assert {r.serial for r in ca.records()} == set(serials)

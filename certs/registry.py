"""The CA's journal (``index.jsonl``) shared between processes: locked appends, tailed reads.

The CLI (`baetyl certs revoke`) and the server may work on the same CA at once. The journal (format
in `certs.records`) is only ever appended to, so its cost does not grow with its length:

* **Writes** (`Registry.transaction`) take the exclusive ``flock`` on ``.lock``, read the lines
  other processes appended since this instance last looked, let the caller stage events against that
  state, then append them as one line (one ``write`` with ``O_APPEND``, then ``fdatasync``) and,
  when the set of revoked serials changed, re-sign the CRL and replace ``crl.pem``. An issuance
  costs one small append and one sync: O(1) in the number of certificates already issued. A
  revocation or renewal also signs a CRL, which costs O(number of serials on the CRL), not
  O(number issued).
* **Reads** (`records`, `get`, `revoked_serials`, ...) take no file lock: they ``stat`` the journal
  and parse only the complete lines appended since the last read (none when the size is unchanged),
  so a server polling the registry pays O(new events). A file with another inode, a smaller size
  than what was read, or no line end where the last line read ended (replaced, restored from a
  backup or edited) is read again from the start.

Crash safety: committed lines are never rewritten. A crash in the middle of an append leaves an
incomplete last line (no newline). Readers without the lock ignore it (it may also be another
process's append in progress); the next writer, holding the lock, knows it is a crash leftover,
logs a warning and truncates it away: the interrupted operation did not happen (its caller got no
certificate). A complete line that is not a valid commit is corruption anywhere in the file: it
raises CAInvalidError naming the file and line, and the file is left untouched. Lock-free reads
that hit a bad line read it again under the lock before reporting it, so a race with a writer
cannot be mistaken for corruption. A crash between the journal append and the CRL write leaves a
CRL whose number is behind the journal's; `certs.authority.CertificateAuthority` re-signs it when
it next loads the CA.

The journal is not compacted: it grows by about 500 bytes per certificate issued and 200 per
revocation (5 MB for 10,000 certificates), and is parsed in full once per process, when the CA is
loaded (about 0.5 s per 10,000 certificates, see ``bench/pki_issue.py``). Compaction (a snapshot
written aside, then renamed over the journal under the lock) would fit this design: readers already
read a replaced file from its start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import CAInvalidError, InvalidIdentityError
from certs.identity import Identity
from certs.keys import write_public_file
from certs.layout import CRL, JOURNAL, locked
from certs.records import (
    CertificateKind,
    CertificateRecord,
    CrlPublished,
    Delta,
    Issued,
    Revoked,
    State,
    Superseded,
    decode_commit,
    decode_header,
    encode_commit,
)

__all__ = ["CrlSigner", "Registry", "Transaction"]

log = logging.getLogger(__name__)

CrlSigner = Callable[
    [Sequence[CertificateRecord], int, datetime, int], x509.CertificateRevocationList
]
"""Signs a CRL listing some records, with a CRL number, at a time, valid for some days."""

_BAD_LINE = (ValueError, KeyError, TypeError, InvalidIdentityError)


class _Corrupt(Exception):
    """A complete journal line that is not a valid header or commit."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(line, reason)
        self.line = line
        self.reason = reason


class Transaction:
    """One locked change of the registry: events staged here are appended when the block ends."""

    def __init__(self, state: State, now: datetime) -> None:
        self._state = state
        self.delta = Delta()
        self.now = now
        self.publish_crl = False
        """Sign a new CRL (with the next CRL number) and write it, after the commit."""
        self.next_update_days = 7
        self.crl: x509.CertificateRevocationList | None = None
        """The CRL signed, once the block has ended, if `publish_crl`."""

    def get(self, serial: int) -> CertificateRecord | None:
        """The record of `serial`, including the changes staged in this transaction."""
        return self._state.get(serial, self.delta)

    def add(
        self, certificate: x509.Certificate, kind: CertificateKind, identity: Identity | None
    ) -> CertificateRecord:
        """Record a certificate just issued."""
        if identity is not None:
            common_name = identity.common_name
        else:
            names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            common_name = str(names[0].value) if names else ""
        record = CertificateRecord.issued(certificate, kind, identity, common_name)
        if self.get(record.serial) is not None:  # 159 random bits: never in practice
            raise CAInvalidError("A serial number repeated; issue the certificate again.")
        return self._stage(Issued(record))

    def revoke(self, serial: int, at: datetime, reason: x509.ReasonFlags) -> CertificateRecord:
        """Revoke a known certificate at `at` for `reason`; publishes a CRL."""
        self.publish_crl = True
        return self._stage(Revoked(serial, at, reason))

    def supersede(self, serial: int, at: datetime, by: int) -> CertificateRecord:
        """Mark a valid certificate superseded by `by` (staged before); publishes a CRL."""
        self.publish_crl = True
        return self._stage(Superseded(serial, at, by))

    def _stage(self, event: Issued | Revoked | Superseded) -> CertificateRecord:
        record = self._state.stage(self.delta, event)
        if record is None:  # pragma: no cover - only CRL events stage no record
            raise AssertionError(event)
        return record


class Registry:
    """Reads and appends to the journal of one CA directory; the CRL is signed through `sign_crl`.

    Safe to share between threads (an instance lock serializes them) and between processes (the
    directory's ``flock``).
    """

    def __init__(self, directory: Path, sign_crl: CrlSigner) -> None:
        self._directory = directory
        self._sign_crl = sign_crl
        self._lock = threading.RLock()
        self._state = State()
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the journal read
        self._offset = 0  # bytes of complete lines read
        self._lines = 0  # complete lines read (the header included)
        self._loads = 0

    @property
    def path(self) -> Path:
        """The journal."""
        return self._directory / JOURNAL

    @property
    def crl_path(self) -> Path:
        """The CRL file."""
        return self._directory / CRL

    @property
    def position(self) -> int:
        """How many bytes of the journal this instance has read (complete lines only)."""
        return self._offset

    @property
    def loads(self) -> int:
        """How many times the journal was read from its start (once, unless it was replaced)."""
        return self._loads

    @property
    def crl_number(self) -> int:
        """The number of the last CRL signed, as recorded in the journal."""
        with self._lock:
            self._refresh()
            return self._state.crl_number

    def refresh(self) -> None:
        """Read what was appended since the last read; raise CAInvalidError if it is corrupt."""
        with self._lock:
            self._refresh()

    def records(self) -> list[CertificateRecord]:
        """Every record, in no particular order (statuses as stored: no expiry)."""
        with self._lock:
            self._refresh()
            return list(self._state.records.values())

    def get(self, serial: int) -> CertificateRecord | None:
        """The record of `serial`, or None."""
        with self._lock:
            self._refresh()
            return self._state.get(serial)

    def revoked_serials(self) -> frozenset[int]:
        """The serials on the CRL; O(1) when nothing was revoked since the last call."""
        with self._lock:
            self._refresh()
            return self._state.revoked_serials()

    @contextlib.contextmanager
    def transaction(self, now: datetime) -> Iterator[Transaction]:
        """Lock, catch up, let the caller stage events, then append them (and sign the CRL)."""
        with self._lock, locked(self._directory):
            self._catch_up(repair=True)
            txn = Transaction(self._state, now)
            yield txn
            delta = txn.delta
            if txn.publish_crl:
                self._state.stage(delta, CrlPublished(self._state.crl_number + 1))
            if not delta.events:
                return
            line = encode_commit(now, delta.events)
            self._append(line)
            self._state.commit(delta)
            self._offset += len(line)
            self._lines += 1
            if txn.publish_crl:
                txn.crl = self._sign_crl(
                    self._state.on_crl(), self._state.crl_number, now, txn.next_update_days
                )
                write_public_file(self.crl_path, txn.crl.public_bytes(serialization.Encoding.PEM))

    # -- internals -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Catch up without the file lock; on a bad line, try again holding it before reporting."""
        try:
            self._catch_up(repair=False)
        except CAInvalidError as error:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(locked(self._directory))
                except OSError:  # e.g. a read-only CA directory: report what the read found
                    raise error from None
                self._catch_up(repair=True)

    def _catch_up(self, *, repair: bool) -> None:
        """Apply the complete lines appended since the last read.

        Without the lock (`repair` False) an incomplete last line is left for later. With it, an
        incomplete last line can only be a crash leftover: it is logged and truncated.
        """
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise self._missing() from None
        same_file = (stat.st_dev, stat.st_ino) == self._file
        if same_file and stat.st_size == self._offset and self._lines:
            return  # the common case of a poll: nothing new
        try:
            with open(self.path, "rb") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_dev, stat.st_ino) != self._file or stat.st_size < self._offset:
                    self._reset((stat.st_dev, stat.st_ino))
                data = self._read_from_offset(file)
                if data is None:  # not appended to but edited in place: start again
                    self._reset((stat.st_dev, stat.st_ino))
                    file.seek(0)
                    data = file.read()
        except FileNotFoundError:
            raise self._missing() from None
        except OSError as exc:
            raise CAInvalidError(
                f"The CA journal {self.path} cannot be read ({exc.strerror})."
            ) from exc
        try:
            tail = self._apply_lines(data)
        except _Corrupt as exc:
            raise CAInvalidError(
                f"The CA journal {self.path} is corrupt at line {exc.line} ({exc.reason}); "
                "restore it from a backup. It was left untouched."
            ) from None
        if tail and self._lines == 0:
            raise CAInvalidError(
                f"The CA journal {self.path} is corrupt at line 1 (no complete header line); "
                "restore it from a backup. It was left untouched."
            )
        if tail and repair:
            self._truncate_tail(tail)

    def _read_from_offset(self, file: BinaryIO) -> bytes | None:
        """The bytes after the last line read, or None if that line no longer ends there."""
        if self._offset == 0:
            file.seek(0)
            return file.read()
        file.seek(self._offset - 1)
        data = file.read()
        return data[1:] if data[:1] == b"\n" else None

    def _apply_lines(self, data: bytes) -> int:
        """Apply every complete line of `data`; return the length of the incomplete rest."""
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            line = data[start:end]
            number = self._lines + 1
            try:
                if self._lines == 0:
                    decode_header(line)
                else:
                    self._state.apply(decode_commit(line))
            except _BAD_LINE as exc:
                reason = f"{exc.args[0]!r} is missing" if isinstance(exc, KeyError) else str(exc)
                raise _Corrupt(number, reason or type(exc).__name__) from exc
            self._offset += end + 1 - start
            self._lines = number
            start = end + 1
        if self._lines == 0 and not data:
            raise _Corrupt(1, "the file is empty")
        return len(data) - start

    def _reset(self, file: tuple[int, int]) -> None:
        if self._file is not None:
            log.info("CA journal %s was replaced or shortened; reading it again", self.path)
        self._state = State()
        self._file = file
        self._offset = 0
        self._lines = 0
        self._loads += 1

    def _truncate_tail(self, size: int) -> None:
        log.warning(
            "The CA journal %s ended with an incomplete line (%d bytes after line %d), left by a "
            "write interrupted by a crash; it was cut off. The operation it recorded did not "
            "happen (its caller got an error or no answer).",
            self.path,
            size,
            self._lines,
        )
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, self._offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, line: bytes) -> None:
        """Append one commit line and sync it; on failure, cut the file back to where it was."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != self._file or stat.st_size != self._offset:
                raise CAInvalidError(
                    f"The CA journal {self.path} changed while this process held the CA lock; "
                    "some program writes it without the lock. Stop it, then try again."
                )
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                _sync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._offset)
                raise
        finally:
            os.close(fd)

    def _missing(self) -> CAInvalidError:
        return CAInvalidError(
            f"The CA journal {self.path} is missing; restore it from a backup (the CA cannot "
            "track revocations without it)."
        )


def _sync(fd: int) -> None:
    """Make appended data durable (the size included); fdatasync where the platform has it."""
    sync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
    sync(fd)

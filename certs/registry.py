"""The CA directory's ``index.json`` shared between processes: locked writes, cached reads.

The CLI (`baetyl certs revoke`) and the server may work on the same CA at once. Every
read-modify-write takes an exclusive ``flock`` on ``.lock`` and re-reads the index inside it; plain
reads reuse the last parsed index until the file changes on disk (it is only ever replaced).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.errors import CAInvalidError
from certs.identity import Identity
from certs.keys import atomic_write, write_public_file
from certs.layout import CRL, INDEX, locked
from certs.records import CertificateKind, CertificateRecord, Index

__all__ = ["CrlSigner", "Registry", "Transaction"]


CrlSigner = Callable[[Index, datetime, int], x509.CertificateRevocationList]
"""Signs a CRL for an index (whose `crl_number` it carries), at a time, valid for some days."""


class Transaction:
    """One locked read-modify-write of the index; changes are saved when the block ends cleanly."""

    def __init__(self, index: Index, now: datetime) -> None:
        self.original = index
        self.index = index
        self.now = now
        self.publish_crl = False
        self.next_update_days = 7
        self.crl: x509.CertificateRevocationList | None = None

    def put(self, record: CertificateRecord, *, publish_crl: bool = False) -> None:
        """Add or replace a record; `publish_crl` when the set of revoked serials changed."""
        self.index = self.index.with_record(record)
        self.publish_crl = self.publish_crl or publish_crl

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
        if record.serial in self.index.records:  # 159 random bits: never in practice
            raise CAInvalidError("A serial number repeated; issue the certificate again.")
        self.put(record)
        return record


class Registry:
    """Reads and writes the index of one CA directory; the CRL is re-signed through `sign_crl`."""

    def __init__(self, directory: Path, sign_crl: CrlSigner) -> None:
        self._directory = directory
        self._sign_crl = sign_crl
        self._cache: tuple[tuple[int, int, int], Index] | None = None

    @property
    def path(self) -> Path:
        """The index file."""
        return self._directory / INDEX

    @property
    def crl_path(self) -> Path:
        """The CRL file."""
        return self._directory / CRL

    def read(self, *, force: bool = False) -> Index:
        """The current index, parsed again only if the file changed (or `force`)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return Index.load(self.path)  # raises the "missing" error
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if not force and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        index = Index.load(self.path)
        self._cache = (key, index)
        return index

    @contextlib.contextmanager
    def transaction(self, now: datetime) -> Iterator[Transaction]:
        """Lock, re-read, let the caller change the index, then save it (and the CRL if asked)."""
        with locked(self._directory):
            txn = Transaction(self.read(force=True), now)
            yield txn
            if txn.index is txn.original and not txn.publish_crl:
                return
            index = txn.index.with_next_crl_number() if txn.publish_crl else txn.index
            atomic_write(self.path, index.dumps(), 0o600)
            self._cache = None
            if txn.publish_crl:
                txn.crl = self._sign_crl(index, now, txn.next_update_days)
                write_public_file(self.crl_path, txn.crl.public_bytes(serialization.Encoding.PEM))

"""Secrets encrypted at rest with AES-256-GCM, under keys kept in a keyring file.

The keyring is a small JSON file, by convention ``<data-dir>/keys/secrets.key``::

    {"current": "3f9a0c1e", "keys": {"3f9a0c1e": "<base64 of 32 random bytes>"}}

It is created with mode 0600 (its directory 0700) on first use, refused when group or others can
read it, and never overwritten when it is malformed. A ciphertext names the key that made it::

    box = SecretBox.open_or_create(data_dir / "keys" / "secrets.key")
    token = box.encrypt(b"hunter2", context="secret/default/db-password")  # "v1.<kid>.<data>"
    box.decrypt(token, context="secret/default/db-password")                 # b"hunter2"

The ``context`` names the record the secret belongs to and is authenticated with it, so a
ciphertext copied into another record does not decrypt. `SecretBox.rotate` adds a key and makes it
current; older keys stay in the keyring so older ciphertexts still decrypt, and
`SecretBox.needs_reencrypt` tells which ones to rewrite.

Exceptions::

    CryptoError

Programming errors (an empty context) raise ValueError. No error message or repr ever holds a
plaintext or key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certs import write_private_file
from management.errors import ManagementError

__all__ = ["CryptoError", "SecretBox", "read_or_create_private_file"]

_VERSION: Final = "v1"
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_MAX_TOKEN_CHARS: Final = 16 * 1024 * 1024
_AAD_PREFIX: Final = b"pybaetyl secretbox v1\x00"


class CryptoError(ManagementError):
    """A keyring cannot be used, or a ciphertext cannot be decrypted."""


def _insecure_mode(path: Path) -> int | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_or_create_private_file(
    path: Path,
    create: Callable[[], bytes],
    *,
    what: str,
    error: type[Exception],
) -> bytes:
    """Read the secret file `path`, first creating it (0600, atomically) from `create()` if absent.

    An existing file is never replaced: if two processes create it at once, one wins and both read
    the winner's content. A file readable by group or others, or one that is not a regular file,
    raises `error` with a message that says what to do; `what` names the file in that message.
    """
    path = Path(path)
    try:
        if not path.exists():
            staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
            write_private_file(staging, create())  # 0600 from the first byte, fsynced
            try:
                os.link(staging, path)  # fails if another process created `path` meanwhile
                _fsync_dir(path.parent)
            except FileExistsError:
                pass
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staging.unlink()
        if not path.is_file():
            raise error(f"The {what} {path} is not a regular file; move it away and try again.")
        mode = _insecure_mode(path)
        if mode is not None:
            raise error(
                f"The {what} {path} is readable by group or others (mode {mode:04o}); "
                f"run `chmod 600 {path}` and try again."
            )
        return path.read_bytes()
    except OSError as exc:
        raise error(
            f"Cannot use the {what} {path}: {exc.strerror}; check the owner and permissions of "
            "the file and its directory."
        ) from exc


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Decode unpadded base64url strictly; None unless `text` is the canonical encoding."""
    if _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if _b64url_encode(data) == text else None


@dataclass(frozen=True, slots=True)
class _Keyring:
    """The parsed keyring: the current key id and every key by id, in creation order."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)

    @classmethod
    def fresh(cls) -> Self:
        kid = _new_kid(())
        return cls(kid, {kid: AESGCM.generate_key(bit_length=_KEY_BYTES * 8)})

    @classmethod
    def parse(cls, data: bytes, path: Path) -> Self:
        malformed = CryptoError(
            f"The keyring {path} is malformed; it was left unchanged. Restore it from a backup "
            'or fix it by hand: it must be {"current": "<kid>", "keys": {"<kid>": "<base64 of '
            '32 bytes>"}} with "current" one of the keys.'
        )
        try:
            document = json.loads(data)
        except (ValueError, RecursionError):
            raise malformed from None
        if not isinstance(document, dict) or set(document) != {"current", "keys"}:
            raise malformed
        current, entries = document["current"], document["keys"]
        if not isinstance(current, str) or not isinstance(entries, dict) or current not in entries:
            raise malformed
        keys: dict[str, bytes] = {}
        for kid, encoded in entries.items():
            if _KID_RE.fullmatch(kid) is None or not isinstance(encoded, str):
                raise malformed
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise malformed from None
            if len(key) != _KEY_BYTES:
                raise malformed
            keys[kid] = key
        return cls(current, keys)

    def dump(self) -> bytes:
        entries = {kid: base64.b64encode(key).decode("ascii") for kid, key in self.keys.items()}
        text = json.dumps({"current": self.current, "keys": entries}, indent=2)
        return (text + "\n").encode("ascii")


def _new_kid(taken: Iterable[str]) -> str:
    used = set(taken)
    while True:
        kid = secrets.token_hex(4)
        if kid not in used:
            return kid


def _aad(kid: str, context: str) -> bytes:
    return _AAD_PREFIX + kid.encode("ascii") + b"\x00" + context.encode("utf-8", "surrogatepass")


def _check_context(context: str) -> None:
    if not isinstance(context, str) or not context:
        raise ValueError(
            "The context must be a non-empty string naming the record, e.g. "
            "'secret/default/db-password'."
        )


class SecretBox:
    """Encrypts and decrypts secrets with the keys of one keyring file; thread-safe."""

    __slots__ = ("_cipher_cache", "_keyring", "_lock", "_path")

    def __init__(self, path: Path, keyring: _Keyring) -> None:
        """Use `open_or_create`; this constructor is for that method only."""
        self._path = Path(path)
        self._keyring = keyring
        self._lock = threading.Lock()
        self._cipher_cache: dict[str, AESGCM] = {}

    def __repr__(self) -> str:
        return (
            f"SecretBox(path={str(self._path)!r}, current={self._keyring.current!r}, "
            f"keys={len(self._keyring.keys)})"
        )

    @classmethod
    def open_or_create(cls, path: Path) -> Self:
        """Open the keyring at `path`, creating it with one fresh key (0600, dir 0700) if absent."""
        path = Path(path)
        data = read_or_create_private_file(
            path, lambda: _Keyring.fresh().dump(), what="keyring", error=CryptoError
        )
        return cls(path, _Keyring.parse(data, path))

    @property
    def path(self) -> Path:
        """The keyring file."""
        return self._path

    @property
    def current_kid(self) -> str:
        """The id of the key new ciphertexts are made with."""
        return self._keyring.current

    def encrypt(self, plaintext: bytes, *, context: str) -> str:
        """Encrypt `plaintext` for the record named `context`; returns ``v1.<kid>.<base64url>``."""
        _check_context(context)
        keyring = self._keyring
        kid = keyring.current
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher(kid, keyring.keys[kid]).encrypt(nonce, plaintext, _aad(kid, context))
        return f"{_VERSION}.{kid}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, *, context: str) -> bytes:
        """Decrypt a ciphertext made by `encrypt` for the same `context`."""
        _check_context(context)
        kid, blob = self._parse(token)
        key = self._keyring.keys.get(kid)
        if key is None:
            self._reload()  # another process may have rotated the keyring since we opened it
            key = self._keyring.keys.get(kid)
        if key is None:
            raise CryptoError(
                f"The secret for {context!r} was encrypted with key {kid!r}, which is not in the "
                f"keyring {self._path}; restore the keyring from a backup that holds that key."
            )
        try:
            return self._cipher(kid, key).decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(kid, context)
            )
        except InvalidTag:
            raise CryptoError(
                f"The secret for {context!r} does not decrypt: it was altered, or it belongs to "
                "another record; set the secret again."
            ) from None

    def rotate(self) -> str:
        """Add a fresh key, make it current and save the keyring atomically; returns its id.

        The file is re-read under a lock first, so keys added by another process are kept.
        """
        with self._lock, self._file_lock():
            on_disk = _Keyring.parse(self._read(), self._path)
            keys = dict(on_disk.keys)
            for kid, key in self._keyring.keys.items():
                if keys.setdefault(kid, key) != key:
                    raise CryptoError(
                        f"The keyring {self._path} holds another key under the id {kid!r} than "
                        "the one in use; stop every process using it and restore it from a backup."
                    )
            kid = _new_kid(keys)
            keys[kid] = AESGCM.generate_key(bit_length=_KEY_BYTES * 8)
            rotated = _Keyring(kid, keys)
            write_private_file(self._path, rotated.dump())
            self._keyring = rotated
            return kid

    def needs_reencrypt(self, token: str) -> bool:
        """Whether `token` was made with a key other than the current one."""
        kid, _ = self._parse(token)
        return kid != self._keyring.current

    def _parse(self, token: str) -> tuple[str, bytes]:
        malformed = CryptoError(
            f"A stored secret is not a pybaetyl ciphertext (expected '{_VERSION}.<kid>.<data>'); "
            "set the secret again."
        )
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
            raise malformed
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or _KID_RE.fullmatch(parts[1]) is None:
            raise malformed
        blob = _b64url_decode(parts[2])
        if blob is None or len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise malformed
        return parts[1], blob

    def _cipher(self, kid: str, key: bytes) -> AESGCM:
        cipher = self._cipher_cache.get(kid)
        if cipher is None:
            cipher = self._cipher_cache[kid] = AESGCM(key)
        return cipher

    def _read(self) -> bytes:
        return read_or_create_private_file(
            self._path, lambda: self._keyring.dump(), what="keyring", error=CryptoError
        )

    def _reload(self) -> None:
        with self._lock:
            on_disk = _Keyring.parse(self._read(), self._path)
            self._keyring = _Keyring(on_disk.current, {**self._keyring.keys, **on_disk.keys})

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self._path.with_name(f".{self._path.name}.lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

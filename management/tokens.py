"""API bearer tokens and signed, expiring, single-use activation tokens.

**API tokens** authenticate calls to the management API within one namespace. The caller shows
``bt_<id>_<secret>``; the server stores only the id and `hash_secret` of the secret::

    token_id, token, stored_hash = new_api_token()   # show `token` once, keep the other two
    token_id, secret = parse_api_token(header_value)
    verify_secret(secret, stored_hash_of(token_id))

**Activation tokens** go into a node's install command. They are signed by the cloud with
HMAC-SHA256, so the cloud keeps no table of outstanding tokens, and they expire::

    signer = TokenSigner.open_or_create(data_dir / "keys" / "activation.key")
    token = signer.sign(ActivationClaims.new(ActivationKind.NODE, "default", "gateway-1", now=now))
    claims = signer.verify(token, now=now)

A token is ``bact1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "bact1." + claims))>``.

*Single use is the caller's job*: after `TokenSigner.verify` succeeds, record ``claims.jti`` in a
store with a unique constraint, in the same transaction that activates the node, and refuse the
activation if the jti is already there. Keep each jti until ``claims.expires_at``; after that the
token is refused as expired anyway.

Exceptions::

    TokenError
    ├── TokenMalformed
    ├── TokenForged
    ├── TokenExpired
    └── TokenKeyError

No message or log line holds a token, a secret or key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Self

from certs import Identity, InvalidIdentityError
from management.crypto import read_or_create_private_file
from management.errors import ManagementError

__all__ = [
    "ACTIVATION_PREFIX",
    "API_TOKEN_PREFIX",
    "MAX_ACTIVATION_LIFETIME",
    "ActivationClaims",
    "ActivationKind",
    "TokenError",
    "TokenExpired",
    "TokenForged",
    "TokenKeyError",
    "TokenMalformed",
    "TokenSigner",
    "hash_secret",
    "new_api_token",
    "parse_api_token",
    "verify_secret",
]

API_TOKEN_PREFIX: Final = "bt_"  # noqa: S105 - a public prefix, not a password
"""The prefix of every API token, so secret scanners and people can recognise one."""

ACTIVATION_PREFIX: Final = "bact1."
"""The prefix, and format version, of every activation token."""

MAX_ACTIVATION_LIFETIME: Final = 7 * 24 * 3600
"""The longest an activation token may live, in seconds (7 days)."""

DEFAULT_ACTIVATION_LIFETIME: Final = 24 * 3600
"""How long `ActivationClaims.new` makes a token live unless told otherwise (1 day)."""

_API_TOKEN_RE: Final = re.compile(r"bt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SHA256_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_JTI_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
_KEY_BYTES: Final = 32
_MAC_BYTES: Final = 32
_MAX_TOKEN_CHARS: Final = 4096
_CLOCK_SKEW: Final = 300
_CLAIM_FIELDS: Final = frozenset({"kind", "namespace", "node", "jti", "issued_at", "expires_at"})
# The operator's command, not the HTTP route: whoever reads these holds a node, not a client.
_ASK_AGAIN: Final = "ask the operator for a new install command ('baetyl node init <node name>')"


class TokenError(ManagementError):
    """Base class of every error raised by this module."""

    status = 401
    code = "Unauthorized"


class TokenMalformed(TokenError):
    """A token is not in the expected format, or its claims are invalid."""


class TokenForged(TokenError):
    """A token's signature does not match: it was altered or signed with another key."""


class TokenExpired(TokenError):
    """An activation token was genuine but its lifetime is over."""


class TokenKeyError(TokenError):
    """The signing key file cannot be used."""

    status = 500
    code = "InternalError"


# --- API tokens -------------------------------------------------------------------------------


def new_api_token() -> tuple[str, str, str]:
    """Make an API token; returns ``(token_id, token, hash)``: show `token` once, store the rest."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 32 bytes, base64url without padding: 43 characters
    return token_id, f"{API_TOKEN_PREFIX}{token_id}_{secret}", hash_secret(secret)


def parse_api_token(text: str) -> tuple[str, str]:
    """Split ``bt_<id>_<secret>`` into ``(id, secret)``; TokenMalformed if it is not one."""
    match = _API_TOKEN_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise TokenMalformed(
            "The API token is malformed; it should look like bt_<12 hex digits>_<43 characters>. "
            "Copy it again in full, or create a new one."
        )
    return match[1], match[2]


def hash_secret(secret: str) -> str:
    """The SHA-256 of `secret`, as 64 hex digits; what is stored in place of the secret."""
    # A fast hash is right here: the secret is 256 random bits, so there is nothing to guess and a
    # slow KDF (bcrypt, scrypt) would only cost time on every request.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def verify_secret(secret: str, stored_hash: str) -> bool:
    """Whether `secret` hashes to `stored_hash`, compared in constant time."""
    if not isinstance(stored_hash, str) or _SHA256_HEX_RE.fullmatch(stored_hash) is None:
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)


# --- activation tokens ------------------------------------------------------------------------


class ActivationKind(StrEnum):
    """What an activation token lets its holder activate."""

    NODE = "node"
    """One node, named in the claims."""
    BATCH = "batch"
    """Nodes of a batch; the claims' ``node`` names the batch."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ActivationClaims:
    """What an activation token says: who may activate as what, and until when (Unix seconds)."""

    kind: ActivationKind
    namespace: str
    node: str
    jti: str
    issued_at: int
    expires_at: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ActivationKind):
            raise ValueError(f"The kind must be one of {[k.value for k in ActivationKind]}.")
        try:
            Identity.node(self.namespace, self.node)  # both must be DNS labels
        except InvalidIdentityError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(self.jti, str) or _JTI_RE.fullmatch(self.jti) is None:
            raise ValueError("The jti must be 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'.")
        if not _is_int(self.issued_at) or not _is_int(self.expires_at):
            raise ValueError("The issued_at and expires_at times must be integer Unix seconds.")
        if self.expires_at <= self.issued_at:
            raise ValueError("The expiry time must come after the issue time.")
        if self.expires_at - self.issued_at > MAX_ACTIVATION_LIFETIME:
            raise ValueError(
                f"An activation token may live at most {MAX_ACTIVATION_LIFETIME} seconds "
                "(7 days); choose a shorter lifetime."
            )

    @classmethod
    def new(
        cls,
        kind: ActivationKind,
        namespace: str,
        node: str,
        *,
        now: int,
        lifetime: int = DEFAULT_ACTIVATION_LIFETIME,
        generation: int = 0,
    ) -> Self:
        """Claims issued at `now`, living `lifetime` seconds, with a fresh random jti that
        carries `generation` (see :attr:`generation`)."""
        jti = secrets.token_hex(16)
        if generation:
            jti = f"{generation}_{jti}"
        return cls(kind, namespace, node, jti, now, now + lifetime)

    @property
    def generation(self) -> int:
        """The node's install-command generation the token was issued in: ``<n>_`` before the
        random part of the jti, 0 without one (and for every token made before generations).
        Revoking a node's install commands moves its generation on; older tokens are refused."""
        head, sep, _ = self.jti.partition("_")
        return int(head) if sep and head.isdigit() and len(head) <= 9 else 0

    def to_json(self) -> dict[str, str | int]:
        """The claims as the JSON object signed into the token."""
        return {
            "kind": self.kind.value,
            "namespace": self.namespace,
            "node": self.node,
            "jti": self.jti,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, document: Any) -> Self:
        """Validate a decoded JSON object strictly; ValueError if it is not exactly the claims."""
        if not isinstance(document, dict) or set(document) != _CLAIM_FIELDS:
            raise ValueError(f"The claims must be an object with exactly {sorted(_CLAIM_FIELDS)}.")
        kind = document["kind"]
        if not isinstance(kind, str):
            raise ValueError(f"The kind must be one of {[k.value for k in ActivationKind]}.")
        return cls(
            ActivationKind(kind),  # ValueError if unknown
            document["namespace"],
            document["node"],
            document["jti"],
            document["issued_at"],
            document["expires_at"],
        )


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Decode unpadded base64url strictly; None unless `text` is the canonical encoding."""
    if _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64url_encode(data) == text else None


def _parse_key_file(data: bytes, path: Path) -> bytes:
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise TokenKeyError(
            f"The activation signing key {path} is malformed; it was left unchanged. Restore it "
            "from a backup, or move it away to make a new key (outstanding install commands "
            "then stop working)."
        )
    return key


class TokenSigner:
    """Signs and verifies activation tokens with one HMAC-SHA256 key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        """Sign with `key`, which must hold at least 32 random bytes."""
        if not isinstance(key, bytes) or len(key) < _KEY_BYTES:
            raise ValueError(f"The signing key must be at least {_KEY_BYTES} random bytes.")
        self._key = key

    def __repr__(self) -> str:
        return "TokenSigner(key=<hidden>)"

    @classmethod
    def open_or_create(cls, path: Path) -> Self:
        """Load the key file at `path` (base64 of 32 bytes); make it (0600, dir 0700) if absent."""
        path = Path(path)
        data = read_or_create_private_file(
            path,
            lambda: base64.b64encode(secrets.token_bytes(_KEY_BYTES)) + b"\n",
            what="activation signing key",
            error=TokenKeyError,
        )
        return cls(_parse_key_file(data, path))

    def sign(self, claims: ActivationClaims) -> str:
        """The token carrying `claims`."""
        payload = json.dumps(claims.to_json(), separators=(",", ":"), sort_keys=True)
        signed = ACTIVATION_PREFIX + _b64url_encode(payload.encode("utf-8"))
        return f"{signed}.{_b64url_encode(self._mac(signed))}"

    def verify(self, token: str, *, now: int) -> ActivationClaims:
        """The claims of a genuine, unexpired `token`; the caller must still enforce single use.

        Raises TokenMalformed, TokenForged or TokenExpired (all TokenError). The signature is
        checked, in constant time, before the claims are parsed.
        """
        malformed = TokenMalformed(
            "The activation token is malformed; copy the install command again in full, or "
            f"{_ASK_AGAIN}."
        )
        if (
            not isinstance(token, str)
            or len(token) > _MAX_TOKEN_CHARS
            or not token.startswith(ACTIVATION_PREFIX)
        ):
            raise malformed
        signed, dot, encoded_mac = token.rpartition(".")
        encoded_payload = signed[len(ACTIVATION_PREFIX) :]
        if not dot or len(signed) < len(ACTIVATION_PREFIX) or "." in encoded_payload:
            raise malformed
        payload = _b64url_decode(encoded_payload)
        mac = _b64url_decode(encoded_mac)
        if payload is None or mac is None or len(mac) != _MAC_BYTES:
            raise malformed
        if not hmac.compare_digest(mac, self._mac(signed)):
            raise TokenForged(
                "The activation token is not genuine: it was altered or made by another cloud; "
                f"{_ASK_AGAIN}."
            )
        try:
            claims = ActivationClaims.from_json(json.loads(payload))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
            raise malformed from None
        if claims.issued_at > now + _CLOCK_SKEW:
            raise TokenMalformed(
                "The activation token was issued in the future; check that the cloud's clock is "
                f"right, then {_ASK_AGAIN}."
            )
        if now >= claims.expires_at:
            raise TokenExpired(
                "The activation token has expired; "
                + _ASK_AGAIN.replace("<node name>", claims.node)
                + "."
            )
        return claims

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode("ascii"), hashlib.sha256).digest()

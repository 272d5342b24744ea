"""API tokens and activation tokens: formats, forgery, expiry, strict claims and the key file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from management.tokens import (
    MAX_ACTIVATION_LIFETIME,
    ActivationClaims,
    ActivationKind,
    TokenError,
    TokenExpired,
    TokenForged,
    TokenKeyError,
    TokenMalformed,
    TokenSigner,
    hash_secret,
    new_api_token,
    parse_api_token,
    verify_secret,
)

NOW = 1_750_000_000
KEY = bytes(range(32))
SIGNER = TokenSigner(KEY)


def _claims(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "kind": "node",
        "namespace": "default",
        "node": "gateway-1",
        "jti": "0123456789abcdef0123456789abcdef",
        "issued_at": NOW,
        "expires_at": NOW + 3600,
    }
    base.update(changes)
    return base


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign_raw(document: object, key: bytes = KEY) -> str:
    """Sign any JSON value as the signer would, bypassing claim validation."""
    signed = "bact1." + _b64(json.dumps(document).encode())
    return f"{signed}.{_b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}"


def _node_token(lifetime: int = 3600) -> tuple[str, ActivationClaims]:
    claims = ActivationClaims.new(
        ActivationKind.NODE, "default", "gateway-1", now=NOW, lifetime=lifetime
    )
    return SIGNER.sign(claims), claims


# --- API tokens -------------------------------------------------------------------------------


def test_api_token_round_trip() -> None:
    """A new API token parses back to its id and a secret that verifies against its hash."""
    token_id, token, stored = new_api_token()
    assert len(token_id) == 12
    assert int(token_id, 16) >= 0
    assert token.startswith(f"bt_{token_id}_")
    parsed_id, secret = parse_api_token(token)
    assert parsed_id == token_id
    assert len(secret) == 43
    assert "=" not in secret
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert stored == hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert verify_secret(secret, stored)


def test_api_tokens_are_unique() -> None:
    """Two new API tokens share neither id nor secret."""
    first, second = new_api_token(), new_api_token()
    assert first[0] != second[0]
    assert first[1] != second[1]


def test_api_secret_with_underscores_parses() -> None:
    """A secret holding '_' (part of base64url) still splits off the id correctly."""
    secret = "_" * 43
    assert parse_api_token(f"bt_0123456789ab_{secret}") == ("0123456789ab", secret)


def test_wrong_secret_does_not_verify() -> None:
    """Another secret, or a malformed stored hash, does not verify."""
    _, token, stored = new_api_token()
    _, secret = parse_api_token(token)
    other = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not verify_secret(other, stored)
    assert not verify_secret(secret, stored.upper())
    assert not verify_secret(secret, "")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bt_",
        "bt_0123456789ab",
        "bt_0123456789ab_",
        "bt_0123456789AB_" + "a" * 43,
        "bt_0123456789a_" + "a" * 43,
        "bt_0123456789ab_" + "a" * 42,
        "bt_0123456789ab_" + "a" * 44,
        "bt_0123456789ab_" + "a" * 42 + "=",
        "xx_0123456789ab_" + "a" * 43,
        " bt_0123456789ab_" + "a" * 43,
        "bt_0123456789ab_" + "a" * 43 + "\n",
    ],
)
def test_malformed_api_token_is_refused(text: str) -> None:
    """Anything but exactly ``bt_<12 hex>_<43 base64url>`` is TokenMalformed."""
    with pytest.raises(TokenMalformed, match="API token is malformed"):
        parse_api_token(text)


@settings(max_examples=200)
@given(text=st.text())
def test_arbitrary_text_is_not_an_api_token(text: str) -> None:
    """Parsing arbitrary text raises TokenError and nothing else."""
    with pytest.raises(TokenError):
        parse_api_token(text)


# --- activation tokens ------------------------------------------------------------------------


def test_activation_round_trip() -> None:
    """A signed token verifies to the same claims before it expires."""
    token, claims = _node_token()
    assert token.startswith("bact1.")
    assert SIGNER.verify(token, now=NOW) == claims
    assert SIGNER.verify(token, now=claims.expires_at - 1) == claims


def test_batch_kind_round_trip() -> None:
    """A batch token carries its kind through signing and verification."""
    claims = ActivationClaims.new(ActivationKind.BATCH, "default", "line-3", now=NOW)
    assert SIGNER.verify(SIGNER.sign(claims), now=NOW).kind is ActivationKind.BATCH


def test_new_claims_have_fresh_jti() -> None:
    """Every call to ActivationClaims.new draws another jti."""
    first = ActivationClaims.new(ActivationKind.NODE, "default", "a", now=NOW)
    second = ActivationClaims.new(ActivationKind.NODE, "default", "a", now=NOW)
    assert first.jti != second.jti


def test_expired_token_is_refused() -> None:
    """At and after its expiry a token raises TokenExpired with what to do."""
    token, claims = _node_token()
    for now in (claims.expires_at, claims.expires_at + 10**6):
        with pytest.raises(TokenExpired, match=rf"'baetyl node init {claims.node}'"):
            SIGNER.verify(token, now=now)


def test_token_from_the_future_is_refused() -> None:
    """A token issued well after the verifier's clock is refused."""
    token, _ = _node_token()
    SIGNER.verify(token, now=NOW - 60)  # within the allowed clock skew
    with pytest.raises(TokenMalformed, match="issued in the future"):
        SIGNER.verify(token, now=NOW - 3600)


def test_other_key_is_forged() -> None:
    """A token signed with another key raises TokenForged."""
    token, _ = _node_token()
    with pytest.raises(TokenForged, match="not genuine"):
        TokenSigner(bytes(32)).verify(token, now=NOW)


def test_changed_claims_are_forged() -> None:
    """Rewriting the claims (a longer life, another node) breaks the signature."""
    token, _ = _node_token()
    _, _, mac = token.rpartition(".")
    for changes in ({"expires_at": NOW + 7200}, {"node": "gateway-2"}):
        forged = "bact1." + _b64(json.dumps(_claims(**changes)).encode()) + "." + mac
        with pytest.raises(TokenForged):
            SIGNER.verify(forged, now=NOW)


@pytest.mark.parametrize("part", ["payload", "mac"])
def test_flipped_byte_is_forged(part: str) -> None:
    """Flipping one byte of the payload or the signature raises TokenForged."""
    token, _ = _node_token()
    signed, _, mac = token.rpartition(".")
    if part == "payload":
        payload = bytearray(base64.urlsafe_b64decode(signed[6:] + "=="))
        payload[3] ^= 0x01
        token = f"bact1.{_b64(bytes(payload))}.{mac}"
    else:
        raw = bytearray(base64.urlsafe_b64decode(mac + "="))
        raw[0] ^= 0x80
        token = f"{signed}.{_b64(bytes(raw))}"
    with pytest.raises(TokenForged):
        SIGNER.verify(token, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "bact1.",
        "bact1..",
        "bact1.e30",
        "bact2.e30." + "A" * 43,
        "bact1.e30.AAAA",
        "bact1.e30." + "A" * 43 + "=",
        "bact1.e30." + "A" * 42 + "B",
        "bact1.e30.e30." + "A" * 43,
        "bact1.e3 0." + "A" * 43,
        "bact1." + "A" * 5000,
    ],
)
def test_malformed_activation_token_is_refused(token: str) -> None:
    """A token not shaped as ``bact1.<payload>.<32-byte mac>`` is TokenMalformed."""
    with pytest.raises(TokenMalformed, match="malformed"):
        SIGNER.verify(token, now=NOW)


@pytest.mark.parametrize(
    "document",
    [
        [],
        "claims",
        _claims(extra=1),
        {k: v for k, v in _claims().items() if k != "jti"},
        _claims(kind="operator"),
        _claims(kind=1),
        _claims(namespace="Default"),
        _claims(node=""),
        _claims(node=None),
        _claims(jti="short"),
        _claims(issued_at="1750000000"),
        _claims(issued_at=True),
        _claims(expires_at=float(NOW + 60)),
        _claims(expires_at=NOW),
        _claims(expires_at=NOW - 1),
        _claims(expires_at=NOW + MAX_ACTIVATION_LIFETIME + 1),
    ],
)
def test_signed_but_invalid_claims_are_malformed(document: object) -> None:
    """Genuinely signed claims that break a rule are still refused as TokenMalformed."""
    with pytest.raises(TokenMalformed):
        SIGNER.verify(_sign_raw(document), now=NOW)


def test_lifetime_limit() -> None:
    """Exactly 7 days is allowed; a second more is refused at construction."""
    token, claims = _node_token(lifetime=MAX_ACTIVATION_LIFETIME)
    assert SIGNER.verify(token, now=NOW) == claims
    with pytest.raises(ValueError, match="at most"):
        _node_token(lifetime=MAX_ACTIVATION_LIFETIME + 1)


@pytest.mark.parametrize(
    "changes",
    [{"namespace": "UPPER"}, {"jti": "x"}, {"expires_at": NOW}, {"issued_at": 1.5}],
)
def test_invalid_claims_cannot_be_built(changes: dict[str, object]) -> None:
    """ActivationClaims refuses invalid values when constructed."""
    document = _claims(**changes)
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ActivationClaims.from_json(document)


@settings(max_examples=300)
@given(text=st.text())
def test_arbitrary_text_raises_only_token_error(text: str) -> None:
    """Verifying arbitrary text raises a TokenError and nothing else."""
    with pytest.raises(TokenError):
        SIGNER.verify(text, now=NOW)


@settings(max_examples=300)
@given(text=st.text(alphabet="bact1.ABCDEFabcdef0123456789-_=", max_size=80))
def test_token_shaped_text_raises_only_token_error(text: str) -> None:
    """Text close to the token alphabet also raises only TokenError."""
    with pytest.raises(TokenError):
        SIGNER.verify("bact1." + text, now=NOW)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(
    overrides=st.dictionaries(
        st.sampled_from(["kind", "namespace", "node", "jti", "issued_at", "expires_at", "x"]),
        _JSON,
        max_size=3,
    )
)
def test_signed_arbitrary_claims_raise_only_token_error(overrides: dict[str, object]) -> None:
    """Genuinely signed claims with arbitrary values either verify or raise a TokenError."""
    try:
        claims = SIGNER.verify(_sign_raw(_claims(**overrides)), now=NOW)
    except TokenError:
        return
    assert claims.to_json() == _claims(**overrides)


def test_errors_and_repr_never_show_the_token_or_key() -> None:
    """No error message or repr holds the token, its signature or the key."""
    token, _ = _node_token()
    signed, _, mac = token.rpartition(".")
    texts = [repr(SIGNER)]
    tampered = signed + "." + ("y" if mac[0] == "x" else "x") + mac[1:]  # always another MAC
    for bad, now in ((token, NOW + 10**6), (tampered, NOW), (token + "x", NOW)):
        with pytest.raises(TokenError) as caught:
            SIGNER.verify(bad, now=now)
        texts.append(str(caught.value))
    for text in texts:
        assert mac not in text
        assert signed[6:] not in text
        assert KEY.hex() not in text
        assert _b64(KEY) not in text


def test_short_key_is_refused() -> None:
    """A signing key under 32 bytes is a programming error."""
    with pytest.raises(ValueError, match="at least 32"):
        TokenSigner(b"short")


# --- the key file -----------------------------------------------------------------------------


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    """The key file is made 0600 in a 0700 directory, and reopening it verifies old tokens."""
    path = tmp_path / "keys" / "activation.key"
    token = TokenSigner.open_or_create(path).sign(
        ActivationClaims.new(ActivationKind.NODE, "default", "gateway-1", now=NOW)
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(base64.b64decode(path.read_bytes().strip())) == 32
    assert TokenSigner.open_or_create(path).verify(token, now=NOW).node == "gateway-1"


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    """A key file readable by group or others is refused with the chmod to run."""
    path = tmp_path / "activation.key"
    TokenSigner.open_or_create(path)
    path.chmod(0o640)
    with pytest.raises(TokenKeyError, match="chmod 600"):
        TokenSigner.open_or_create(path)


@pytest.mark.parametrize("content", [b"", b"not base64!", base64.b64encode(bytes(16))])
def test_malformed_key_file_is_refused_and_kept(tmp_path: Path, content: bytes) -> None:
    """A malformed key file is refused and left as it was."""
    path = tmp_path / "activation.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(TokenKeyError, match="left unchanged"):
        TokenSigner.open_or_create(path)
    assert path.read_bytes() == content


def test_activation_claims_carry_the_install_generation() -> None:
    """The generation rides in the jti (``<n>_<random>``); tokens made without one, or before
    generations existed (a plain random jti), are generation 0; a jti that merely looks like
    one past 9 digits is not taken for one."""
    kind = ActivationKind.NODE
    assert ActivationClaims.new(kind, "default", "gw", now=1000).generation == 0
    claims = ActivationClaims.new(kind, "default", "gw", now=1000, generation=7)
    assert claims.generation == 7
    assert claims.jti.startswith("7_")
    assert len(claims.jti) <= 64
    assert ActivationClaims.from_json(claims.to_json()).generation == 7
    legacy = ActivationClaims(kind, "default", "gw", "0123456789abcdef0123", 1000, 2000)
    assert legacy.generation == 0
    huge = ActivationClaims(kind, "default", "gw", "12345678901_abcdef", 1000, 2000)
    assert huge.generation == 0

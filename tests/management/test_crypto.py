"""Secrets at rest: AES-GCM round trips, bound contexts, key rotation and a guarded keyring file."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from management.crypto import CryptoError, SecretBox

CONTEXT = "secret/default/db-password"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _flip(token: str, index: int) -> str:
    """Change one base64url character of the data part of `token`."""
    head, data = token.rsplit(".", 1)
    chars = list(data)
    chars[index] = "A" if chars[index] != "A" else "B"
    return f"{head}.{''.join(chars)}"


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    """Where the keyring goes: a `keys` directory that does not exist yet."""
    return tmp_path / "keys" / "secrets.key"


@pytest.fixture
def box(keyring_path: Path) -> SecretBox:
    """A secret box on a freshly created keyring."""
    return SecretBox.open_or_create(keyring_path)


@pytest.fixture(scope="module")
def shared_box(tmp_path_factory: pytest.TempPathFactory) -> SecretBox:
    """One box for the property tests, which cannot take function-scoped fixtures."""
    return SecretBox.open_or_create(tmp_path_factory.mktemp("crypto") / "secrets.key")


def test_round_trip(box: SecretBox) -> None:
    """A secret decrypts to its plaintext under the context it was encrypted for."""
    token = box.encrypt(b"hunter2", context=CONTEXT)
    assert box.decrypt(token, context=CONTEXT) == b"hunter2"


def test_token_format_names_version_and_key(box: SecretBox) -> None:
    """A ciphertext is ``v1.<kid>.<base64url>`` with the current key id and no padding."""
    token = box.encrypt(b"", context=CONTEXT)
    version, kid, data = token.split(".")
    assert (version, kid) == ("v1", box.current_kid)
    assert "=" not in data
    assert box.decrypt(token, context=CONTEXT) == b""


def test_each_encryption_uses_a_fresh_nonce(box: SecretBox) -> None:
    """Encrypting the same plaintext twice gives two different ciphertexts."""
    assert box.encrypt(b"same", context=CONTEXT) != box.encrypt(b"same", context=CONTEXT)


def test_reopened_keyring_decrypts(box: SecretBox, keyring_path: Path) -> None:
    """A box opened again on the same file decrypts what the first one encrypted."""
    token = box.encrypt(b"persisted", context=CONTEXT)
    assert SecretBox.open_or_create(keyring_path).decrypt(token, context=CONTEXT) == b"persisted"


def test_wrong_context_is_refused(box: SecretBox) -> None:
    """A ciphertext moved to another record does not decrypt."""
    token = box.encrypt(b"hunter2", context=CONTEXT)
    with pytest.raises(CryptoError, match="belongs to another record"):
        box.decrypt(token, context="secret/default/api-key")


@pytest.mark.parametrize("index", [0, 5, 20, -1])
def test_tampered_ciphertext_is_refused(box: SecretBox, index: int) -> None:
    """Changing any part of the nonce, ciphertext or tag makes decryption fail."""
    token = box.encrypt(b"hunter2 and more", context=CONTEXT)
    with pytest.raises(CryptoError):
        box.decrypt(_flip(token, index), context=CONTEXT)


def test_unknown_kid_is_refused(box: SecretBox) -> None:
    """A ciphertext naming a key the keyring does not hold is refused with that key id."""
    _, _, data = box.encrypt(b"hunter2", context=CONTEXT).split(".")
    with pytest.raises(CryptoError, match="'deadbeef', which is not in the keyring"):
        box.decrypt(f"v1.deadbeef.{data}", context=CONTEXT)


def test_kid_swapped_to_another_key_is_refused(box: SecretBox) -> None:
    """Relabelling a ciphertext with another key's id does not decrypt it."""
    old_kid = box.current_kid
    old = box.encrypt(b"hunter2", context=CONTEXT)
    new_kid = box.rotate()
    with pytest.raises(CryptoError):
        box.decrypt(old.replace(f".{old_kid}.", f".{new_kid}."), context=CONTEXT)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1..",
        "v2.abcd.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.abcd.short",
        "v1.ab cd.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1.abcd.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "v1.abcd." + "A" * 41 + "B",  # not canonical: leftover bits set
        "v1.abcd.AAAA.AAAA",
    ],
)
def test_malformed_ciphertext_is_refused(box: SecretBox, token: str) -> None:
    """Anything that is not a well-formed v1 ciphertext is refused without a decryption attempt."""
    with pytest.raises(CryptoError, match="not a pybaetyl ciphertext"):
        box.decrypt(token, context=CONTEXT)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_arbitrary_text_raises_only_crypto_error(shared_box: SecretBox, text: str) -> None:
    """Decrypting arbitrary text raises CryptoError and nothing else."""
    with pytest.raises(CryptoError):
        shared_box.decrypt(text, context=CONTEXT)


def test_empty_context_is_a_programming_error(box: SecretBox) -> None:
    """An empty context is refused with ValueError, on both sides."""
    with pytest.raises(ValueError, match="non-empty"):
        box.encrypt(b"x", context="")
    with pytest.raises(ValueError, match="non-empty"):
        box.decrypt("v1.abcd.AAAA", context="")


def test_rotation_keeps_old_keys(box: SecretBox, keyring_path: Path) -> None:
    """After rotation old ciphertexts decrypt, new ones use the new key, and the file agrees."""
    old_kid = box.current_kid
    old = box.encrypt(b"old", context=CONTEXT)
    new_kid = box.rotate()
    assert new_kid != old_kid
    assert box.current_kid == new_kid
    new = box.encrypt(b"new", context=CONTEXT)
    assert new.split(".")[1] == new_kid
    assert box.decrypt(old, context=CONTEXT) == b"old"
    assert box.needs_reencrypt(old)
    assert not box.needs_reencrypt(new)
    reopened = SecretBox.open_or_create(keyring_path)
    assert reopened.current_kid == new_kid
    assert reopened.decrypt(old, context=CONTEXT) == b"old"
    assert reopened.decrypt(new, context=CONTEXT) == b"new"
    document = json.loads(keyring_path.read_text())
    assert document["current"] == new_kid
    assert set(document["keys"]) == {old_kid, new_kid}
    assert _mode(keyring_path) == 0o600


def test_rotation_keeps_keys_added_by_another_process(keyring_path: Path) -> None:
    """Two boxes on one file rotating in turn keep each other's keys, and see them on decrypt."""
    first = SecretBox.open_or_create(keyring_path)
    second = SecretBox.open_or_create(keyring_path)
    first_kid = first.rotate()
    token = first.encrypt(b"from first", context=CONTEXT)
    assert second.decrypt(token, context=CONTEXT) == b"from first"  # reloads the keyring
    second_kid = second.rotate()
    keys = json.loads(keyring_path.read_text())["keys"]
    assert {first_kid, second_kid} <= set(keys)
    assert len(keys) == 3


def test_needs_reencrypt_refuses_malformed(box: SecretBox) -> None:
    """needs_reencrypt on something that is not a ciphertext raises CryptoError."""
    with pytest.raises(CryptoError):
        box.needs_reencrypt("plaintext")


@pytest.mark.usefixtures("permissive_umask")
def test_keyring_created_private(keyring_path: Path) -> None:
    """A new keyring is 0600 in a 0700 directory, even under umask 000, with one valid key."""
    box = SecretBox.open_or_create(keyring_path)
    assert _mode(keyring_path) == 0o600
    assert _mode(keyring_path.parent) == 0o700
    document = json.loads(keyring_path.read_text())
    assert document["current"] == box.current_kid
    assert len(base64.b64decode(document["keys"][box.current_kid])) == 32
    assert [p.name for p in keyring_path.parent.iterdir()] == ["secrets.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_other_readable_keyring_is_refused(keyring_path: Path, mode: int) -> None:
    """A keyring readable by group or others is refused with the chmod to run."""
    SecretBox.open_or_create(keyring_path)
    keyring_path.chmod(mode)
    with pytest.raises(CryptoError, match=f"chmod 600 {keyring_path}"):
        SecretBox.open_or_create(keyring_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"current": "a"}',
        b'{"current": "a", "keys": {}}',
        b'{"current": "a", "keys": {"b": "' + base64.b64encode(bytes(32)) + b'"}}',
        b'{"current": "a", "keys": {"a": "' + base64.b64encode(bytes(16)) + b'"}}',
        b'{"current": "a", "keys": {"a": "not base64!"}}',
        b'{"current": "a.b", "keys": {"a.b": "' + base64.b64encode(bytes(32)) + b'"}}',
        b'{"current": "a", "keys": {"a": 1}}',
        b'{"current": "a", "keys": {"a": "' + base64.b64encode(bytes(32)) + b'"}, "x": 1}',
    ],
)
def test_malformed_keyring_is_refused_and_kept(keyring_path: Path, content: bytes) -> None:
    """A malformed keyring is refused and left byte for byte as it was."""
    keyring_path.parent.mkdir(mode=0o700)
    keyring_path.write_bytes(content)
    keyring_path.chmod(0o600)
    with pytest.raises(CryptoError, match="malformed; it was left unchanged"):
        SecretBox.open_or_create(keyring_path)
    assert keyring_path.read_bytes() == content


def test_keyring_that_is_a_directory_is_refused(keyring_path: Path) -> None:
    """A directory where the keyring should be is refused, not replaced."""
    keyring_path.mkdir(parents=True)
    with pytest.raises(CryptoError, match="not a regular file"):
        SecretBox.open_or_create(keyring_path)


def test_no_key_material_or_plaintext_in_repr_or_errors(box: SecretBox, keyring_path: Path) -> None:
    """Neither the repr nor an error message holds key material or the plaintext."""
    document = json.loads(keyring_path.read_text())
    key_b64 = document["keys"][box.current_kid]
    token = box.encrypt(b"hunter2", context=CONTEXT)
    with pytest.raises(CryptoError) as caught:
        box.decrypt(token, context="secret/other")
    for text in (repr(box), str(caught.value)):
        assert key_b64 not in text
        assert "hunter2" not in text
        assert token.split(".")[2] not in text

"""Certificate renewal: a new key and certificate before the current one expires, without downtime.

When less than ``threshold`` of the certificate's lifetime is left, `renew_if_due`

1. makes a new EC P-256 key in ``node.key.new`` (0600); ``node.key`` is not touched yet;
2. sends its CSR (``POST /v1/renew``) to the activation endpoint stored in ``node.json``, over
   mutual TLS: the client certificate is the *current* one, the server is verified with the
   stored ``ca.crt`` and the URL's host name;
3. checks the answer: signed by the stored CA, for the new key, naming the same node;
4. swaps: ``node.crt.previous`` (the old certificate), ``node.crt.new``, then renames
   ``node.key.new`` over ``node.key`` and ``node.crt.new`` over ``node.crt``. A crash between the
   two renames is finished by `finish_interrupted_renewal` (the agent calls it at start).

The old certificate stays valid in the cloud, so the MQTT session made with it goes on. Once the
agent is connected with the new certificate, `retire_previous` (``POST /v1/renew/confirm``,
authenticated by the new certificate) has the cloud revoke the old one as superseded, and
``node.crt.previous`` is deleted. A node that never confirms keeps the old certificate valid
until it expires; its key is gone from the node either way.

Errors::

    EdgeError
     └── RenewalError          renewal failed and nothing was swapped; the message says why
          └── RenewalRefused   the cloud answered with an error ({code, message, requestId})
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.activation import (
    DEFAULT_TIMEOUT,
    ActivationError,
    ActivationRefused,
    _parse_url,
    _request,
)
from edge.certfile import (
    DEFAULT_THRESHOLD,
    NEW_CERT_FILE,
    NEW_KEY_FILE,
    PREVIOUS_CERT_FILE,
    renewal_due,
)
from edge.errors import KeyFileError, RenewalError, RenewalRefused
from edge.state import StateDir, write_atomically

__all__ = [
    "DEFAULT_THRESHOLD",
    "RenewalError",
    "RenewalRefused",
    "Renewed",
    "finish_interrupted_renewal",
    "renew",
    "renew_if_due",
    "renewal_due",
    "retire_previous",
]


_PEM = serialization.Encoding.PEM
_SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


@dataclass(frozen=True, slots=True)
class Renewed:
    """The certificate a renewal stored."""

    node_id: str
    serial: int
    not_after: datetime
    previous_serial: int


def renew_if_due(
    state_dir: Path,
    *,
    now: datetime,
    threshold: float = DEFAULT_THRESHOLD,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Renew the node's certificate if it is due (or ``force``); return whether it was renewed."""
    state = StateDir(state_dir)
    finish_interrupted_renewal(state_dir)
    current = _load_certificate(state.certificate)
    if not force and not renewal_due(current, now=now, threshold=threshold):
        return False
    renew(state_dir, timeout=timeout)
    return True


def renew(state_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> Renewed:
    """Renew the node's certificate now: new key, CSR over mutual TLS, checked answer, swap."""
    state = StateDir(state_dir)
    node_id, url = _node(state)
    current_pem = _read(state.certificate)
    current = _load_certificate(state.certificate)
    ca_pem = _read(state.ca)
    key = ec.generate_private_key(ec.SECP256R1())
    write_atomically(
        state.root / NEW_KEY_FILE,
        key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        mode=0o600,
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))  # the cloud names the node, from the current certificate
        .sign(key, hashes.SHA256())
        .public_bytes(_PEM)
    )
    try:
        certificate = _renewed_certificate(state, node_id, url, ca_pem, key, csr, timeout)
    except RenewalError:
        (state.root / NEW_KEY_FILE).unlink(missing_ok=True)  # a refused renewal leaves no trace
        raise
    write_atomically(state.root / PREVIOUS_CERT_FILE, current_pem)
    write_atomically(state.root / NEW_CERT_FILE, certificate.public_bytes(_PEM))
    _swap(state, key_too=True)
    write_atomically(state.csr, csr)
    return Renewed(
        node_id, certificate.serial_number, certificate.not_valid_after_utc, current.serial_number
    )


def _renewed_certificate(
    state: StateDir,
    node_id: str,
    url: str,
    ca_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    csr: bytes,
    timeout: float,
) -> x509.Certificate:
    """The certificate the cloud answers for ``csr``, checked against the new key and the CA."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    answer = _call(state, url, ca_pem, "/v1/renew", {"csr": csr.decode()}, timeout)
    try:
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
    except (KeyError, ValueError):
        raise RenewalError(
            f"{url} answered the renewal without a certificate; nothing was swapped. Check that "
            "node.json names the cloud's activation endpoint."
        ) from None
    if certificate.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        raise RenewalError(
            "The certificate the cloud answered is not for the new key; nothing was swapped. "
            "Renew again."
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalError(
            "The certificate the cloud answered is not signed by the stored CA; nothing was "
            "swapped. Report this to the cloud's operator."
        ) from None
    names = [name.value for name in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node_id] or answer.get("nodeId") != node_id:
        raise RenewalError(
            f"The certificate the cloud answered does not name node {node_id!r}; nothing was "
            "swapped. Report this to the cloud's operator."
        )
    return certificate


def retire_previous(state_dir: Path, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Have the cloud revoke the certificate a renewal replaced; whether there was one to retire.

    Call it once connected with the new certificate: the broker drops sessions made with the old
    one as soon as it is revoked.
    """
    state = StateDir(state_dir)
    path = state.root / PREVIOUS_CERT_FILE
    if not path.exists():
        return False
    previous = _load_certificate(path)
    _node_id, url = _node(state)
    ca_pem = _read(state.ca)
    serial = format(previous.serial_number, "X")
    _call(state, url, ca_pem, "/v1/renew/confirm", {"previous": serial}, timeout)
    path.unlink(missing_ok=True)
    return True


def finish_interrupted_renewal(state_dir: Path) -> None:
    """Finish a swap a crash interrupted, or drop a new certificate that matches no key."""
    state = StateDir(state_dir)
    new_cert = state.root / NEW_CERT_FILE
    if not new_cert.exists():
        return
    certificate = _load_certificate(new_cert)
    new_key = state.root / NEW_KEY_FILE
    if new_key.exists() and _matches(certificate, new_key):
        _swap(state, key_too=True)
    elif _matches(certificate, state.key):
        _swap(state, key_too=False)
    else:
        new_cert.unlink()


# -- internals -----------------------------------------------------------------------------------


def _swap(state: StateDir, *, key_too: bool) -> None:
    """Rename the new key (if ``key_too``) and then the new certificate over the current ones."""
    try:
        if key_too:
            os.replace(state.root / NEW_KEY_FILE, state.key)
        os.replace(state.root / NEW_CERT_FILE, state.certificate)
        directory = os.open(state.root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise KeyFileError(
            f"Cannot put the renewed key and certificate in place in {state.root}: "
            f"{exc.strerror}; check that the state directory is writable by this user."
        ) from None


def _matches(certificate: x509.Certificate, key_path: Path) -> bool:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    certified = certificate.public_key().public_bytes(*_SPKI)
    return bool(key.public_key().public_bytes(*_SPKI) == certified)


def _node(state: StateDir) -> tuple[str, str]:
    """The node id and the activation endpoint's URL that activation stored in node.json."""
    try:
        info = json.loads(state.node.read_text(encoding="utf-8"))
        node_id, url = info["nodeId"], info["url"]
        if not isinstance(node_id, str) or not isinstance(url, str):
            raise TypeError("not strings")
    except FileNotFoundError:
        raise RenewalError(
            f"{state.root} holds no activated node; run the install command "
            "('baetyl edge activate ...') first."
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise RenewalError(
            f"{state.node} names no node id and activation endpoint; activate the node again "
            "with a new install command."
        ) from None
    return node_id, url


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RenewalError(
            f"Cannot read {path}: {exc.strerror}; run as the user that owns the state directory, "
            "or activate the node again."
        ) from None


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise RenewalError(
            f"{path} is not a PEM certificate; activate the node again with a new install command."
        ) from None


def _call(
    state: StateDir, url: str, ca_pem: bytes, path: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """POST ``body`` to ``path`` over mutual TLS with the node's current certificate and key."""
    try:
        endpoint = _parse_url(url)
        context = ssl.create_default_context(cadata=ca_pem.decode())
        context.load_cert_chain(state.certificate, state.key)
    except ActivationError:
        raise RenewalError(
            f"{state.node} names {url!r}, which is not an activation endpoint; activate the node "
            "again with a new install command."
        ) from None
    except (ssl.SSLError, ValueError) as exc:
        raise RenewalError(
            f"The node's certificate, key or CA in {state.root} cannot be loaded ({exc}); "
            "activate the node again with a new install command."
        ) from None
    try:
        return _request(endpoint, context, "POST", path, body, timeout)
    except ActivationRefused as exc:
        raise RenewalRefused(
            str(exc), status=exc.status, code=exc.code, request_id=exc.request_id
        ) from None
    except ActivationError as exc:
        raise RenewalError(f"Renewal failed, nothing was swapped: {exc}") from None

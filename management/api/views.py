"""Between API bodies and stored resources: what is stored from a write, what a read shows.

Secret values (secret data, registry passwords, certificate keys) are encrypted before they are
stored, bound to their record (``SecretBox`` context ``<kind>/<namespace>/<name>/<key>``), and
never shown by a read except a secret's own data on ``GET /v1/secrets/<name>``; a node gets them
in clear (``node_data``) only for what its own apps use (``NodeResources``).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from management.crypto import SecretBox
from management.errors import BadRequest
from management.store import Kind, Resource

__all__ = [
    "CERTIFICATES",
    "INSTALL_GENERATION",
    "PASSWORD_HASH",
    "decrypt_data",
    "node_data",
    "stored_body",
    "view",
]

# Fields every kind keeps in its body besides the common ones.
_COMMON = ("name", "labels", "description")

# A PEM block (RFC 7468) after optional whitespace: a BEGIN and an END line around base64 text.
# The labels are matched apart so that a block whose END does not match its BEGIN is found and
# refused, not skipped.
_PEM_BLOCK = re.compile(
    r"\s*-----BEGIN ([^\r\n]{0,64}?)-----(.*?)-----END ([^\r\n]{0,64}?)-----", re.S
)
_PEM_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")

INSTALL_GENERATION = "installGeneration"
"""A node's body field kept by the server (never written by clients, never shown): its install
commands' generation, moved on by ``DELETE /v1/nodes/{name}/init``; tokens of an earlier one are
refused (``ActivationClaims.generation``). A counter, not a time: cloud replicas' clocks differ."""


PASSWORD_HASH = "passwordHash"  # noqa: S105 # a field name, not a password
CERTIFICATES = "certificates"
"""A device's body fields kept by the server (never written by clients): its password's scrypt
hash (never shown: a read says ``"password": true``) and its certificates ``[{serial,
notAfter}]``, set by ``POST /v1/devices/{name}/password`` and ``.../certificates``."""


def _time(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _context(resource: Resource, key: str) -> str:
    return f"{resource.kind}/{resource.namespace}/{resource.name}/{key}"


def stored_body(kind: Kind, namespace: str, body: dict[str, Any], box: SecretBox) -> Resource:
    """The resource to store for a validated write ``body`` (secret values encrypted)."""
    name = str(body["name"])
    labels = dict(body.get("labels") or {})
    kept = {k: v for k, v in body.items() if k not in ("name", "labels")}
    resource = Resource(namespace, kind, name, labels=labels, body=kept)
    if kind is Kind.SECRET:
        kept["data"] = {
            key: box.encrypt(str(value).encode(), context=_context(resource, key))
            for key, value in (body.get("data") or {}).items()
        }
    elif kind is Kind.REGISTRY and "password" in body:
        kept["password"] = box.encrypt(
            str(body["password"]).encode(), context=_context(resource, "password")
        )
    elif kind is Kind.CERTIFICATE:
        data = body["data"]
        kept["data"] = {
            "certificate": data["certificate"],
            "key": box.encrypt(str(data["key"]).encode(), context=_context(resource, "key")),
        }
        _check_certificates(
            str(data["certificate"]),
            "data.certificate",
            "data.certificate is not a PEM certificate; paste the '-----BEGIN CERTIFICATE-----' "
            "block (the certificate first, then any intermediate CAs).",
        )
        if "ca" in data:
            _check_certificates(
                str(data["ca"]),
                "data.ca",
                "data.ca is not a PEM certificate bundle; paste one or more "
                "'-----BEGIN CERTIFICATE-----' blocks of the issuing CA.",
            )
            kept["data"]["ca"] = data["ca"]
        kept["info"] = _certificate_info(str(data["certificate"]), str(data["key"]))
    return resource


def _check_certificates(pem: str, field: str, not_pem: str) -> None:
    """Refuse a certificate field holding anything but CERTIFICATE blocks and whitespace.

    ``cryptography``'s loaders skip blocks of other labels and text between blocks: a private
    key between two certificates would load, then be stored in clear, shown by every GET and
    written world-readable as ``tls.crt`` or ``ca.crt`` on the nodes. So the blocks are split
    here and each label checked; only the label is named in the error, never the content.
    """
    position, blocks, malformed = 0, 0, False
    while True:
        # Anchored, block after block: each character is read once, whatever was sent.
        block = _PEM_BLOCK.match(pem, position)
        if block is None:
            malformed = pem[position:].strip() != ""
            break
        label, body, end_label = block.groups()
        if label != end_label or not _PEM_BASE64.fullmatch(body):
            malformed = True
            break
        if label != "CERTIFICATE":
            raise BadRequest(
                f"{field} holds a {label!r} block, but only certificates belong there: a "
                "certificate field is stored and shown in clear and mounted world-readable. "
                f"Remove the block{' (the key goes in data.key)' if 'KEY' in label else ''}.",
                field=field,
            )
        position, blocks = block.end(), blocks + 1
    if malformed or blocks == 0:
        raise BadRequest(
            f"{field} holds text outside its '-----BEGIN CERTIFICATE-----' blocks, or a block "
            "that is not well formed; send only the certificate blocks, each ending with its "
            "'-----END CERTIFICATE-----' line.",
            field=field,
        )
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise BadRequest(not_pem, field=field) from None


def _certificate_info(certificate_pem: str, key_pem: str) -> dict[str, Any]:
    # The first block is the certificate itself (_check_certificates read them all).
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise BadRequest(
            "data.key is not an unencrypted PEM private key; export it without a passphrase.",
            field="data.key",
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != certificate.public_key().public_bytes(pem, spki):
        raise BadRequest(
            "data.key does not belong to data.certificate; send the key the certificate was "
            "issued for.",
            field="data.key",
        )
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    der = certificate.public_bytes(serialization.Encoding.DER)
    return {
        "fingerprint": hashlib.sha256(der).hexdigest(),
        "notBefore": certificate.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "notAfter": certificate.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "subject": certificate.subject.rfc4514_string(),
        "dnsNames": dns_names,
    }


def decrypt_data(resource: Resource, box: SecretBox) -> dict[str, str]:
    """A secret's data in clear (for its owner's GET and for the node that mounts it)."""
    data = resource.body.get("data") or {}
    return {
        key: box.decrypt(token, context=_context(resource, key)).decode()
        for key, token in data.items()
    }


def node_data(resource: Resource, box: SecretBox) -> dict[str, str]:
    """What a node gets on ``resource/get`` for a config, secret, registry or certificate: the
    files of a volume (file name -> content), or a registry's address and credentials; secret
    values decrypted. A certificate is ``tls.crt``, ``tls.key`` and, when it has one, ``ca.crt``.
    """
    body = resource.body
    if resource.kind is Kind.SECRET:
        return decrypt_data(resource, box)
    if resource.kind is Kind.REGISTRY:
        sealed = body.get("password")
        password = (
            ""
            if sealed is None
            else box.decrypt(sealed, context=_context(resource, "password")).decode()
        )
        return {
            "address": str(body.get("address", "")),
            "username": str(body.get("username", "")),
            "password": password,
        }
    if resource.kind is Kind.CERTIFICATE:
        data = body.get("data", {})
        files = {
            "tls.crt": str(data.get("certificate", "")),
            "tls.key": box.decrypt(data["key"], context=_context(resource, "key")).decode(),
        }
        if data.get("ca"):
            files["ca.crt"] = str(data["ca"])
        return files
    return dict(body.get("data", {}))


def view(resource: Resource, *, box: SecretBox | None = None, full: bool = True) -> dict[str, Any]:
    """The API's JSON for a stored resource.

    ``full=False`` is the list form (a secret's data left out). A secret's data is shown only
    with ``box`` (its own GET); passwords and private keys are never shown.
    """
    out: dict[str, Any] = {
        "name": resource.name,
        "namespace": resource.namespace,
        "version": str(resource.version),
        "labels": resource.labels,
        "description": resource.body.get("description", ""),
        "createTime": _time(resource.created_at),
        "updateTime": _time(resource.updated_at),
    }
    body = resource.body
    if resource.kind is Kind.SECRET:
        if full and box is not None:
            out["data"] = decrypt_data(resource, box)
    elif resource.kind is Kind.REGISTRY:
        out["address"] = body.get("address", "")
        out["username"] = body.get("username", "")
    elif resource.kind is Kind.DEVICE:
        out["node"] = body.get("node", "")
        out["topics"] = body.get("topics", {})
        out["password"] = bool(body.get(PASSWORD_HASH))  # the hash itself is never shown
        out["certificates"] = list(body.get(CERTIFICATES) or [])
    elif resource.kind is Kind.CERTIFICATE:
        data = body.get("data", {})
        out["data"] = {"certificate": data.get("certificate", "")}
        if "ca" in data:
            out["data"]["ca"] = data["ca"]
        out.update(body.get("info", {}))
    else:
        for key, value in body.items():
            if key not in _COMMON and key != INSTALL_GENERATION:
                out[key] = value
    return out

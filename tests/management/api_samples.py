"""Sample bodies for every API collection, and a check of responses against the read schemas."""

from __future__ import annotations

import datetime
import functools
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from management.schemas import ValidationFailed, validate

COLLECTIONS = ("nodes", "apps", "configs", "secrets", "registries", "certificates")

# collection -> (schema of one resource, schema of a list item, schema of a list)
READ_SCHEMA: dict[str, tuple[str, str, str]] = {
    "nodes": ("Node", "Node", "NodeList"),
    "apps": ("App", "App", "AppList"),
    "configs": ("Config", "Config", "ConfigList"),
    "secrets": ("Secret", "SecretSummary", "SecretList"),
    "registries": ("Registry", "Registry", "RegistryList"),
    "certificates": ("Certificate", "Certificate", "CertificateList"),
}


def assert_schema(schema: str, body: Any) -> None:
    """Fail unless ``body`` is valid against the published component ``schema``."""
    try:
        validate(schema, body)
    except ValidationFailed as exc:
        raise AssertionError(f"response does not match {schema}: {exc.message}\n{body}") from None


@functools.cache
def key_and_certificate(
    common_name: str = "plc.example.com", dns_names: tuple[str, ...] = ("plc.example.com",)
) -> tuple[str, str]:
    """A self-signed EC certificate and its unencrypted PKCS#8 key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    if dns_names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
        builder = builder.add_extension(san, critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode()


def sample(collection: str, name: str, **changes: Any) -> dict[str, Any]:
    """A valid write body for ``collection`` named ``name``, with ``changes`` applied."""
    body: dict[str, Any]
    if collection == "nodes":
        body = {"name": name, "labels": {"site": "paris"}, "properties": {"interval": 5}}
    elif collection == "apps":
        body = {
            "name": name,
            "labels": {"team": "ot"},
            "selector": "site=paris",
            "services": [{"name": "web", "image": "nginx:1.27"}],
        }
    elif collection == "configs":
        body = {"name": name, "data": {"app.yaml": "level: info\n"}}
    elif collection == "secrets":
        body = {"name": name, "data": {"password": "hunter2-plaintext"}}
    elif collection == "registries":
        body = {
            "name": name,
            "address": "registry.example.com:5000/team",
            "username": "robot",
            "password": "registry-plaintext-pw",
        }
    elif collection == "certificates":
        key, certificate = key_and_certificate()
        body = {"name": name, "data": {"certificate": certificate, "key": key}}
    else:
        raise KeyError(collection)
    body.update(changes)
    return body

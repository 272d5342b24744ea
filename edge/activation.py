"""Activation: the node trades its install token (or a batch's secret) and a CSR for a certificate.

The install command gives the node three things: the activation endpoint's URL, the SHA-256 of the
cloud's CA certificate, and a single-use token. The node

1. fetches the CA (``GET /v1/ca``) over TLS *without* verifying the server, and accepts it only if
   the SHA-256 of its DER encoding is the one it was given; nothing secret has been sent yet;
2. uses its private key (made here, 0600, if it has none; reused if it has one, so re-running is
   safe) to make a CSR;
3. sends the token and the CSR (``POST /v1/activate``, or the batch's secret and the device's
   fingerprint to ``POST /v1/activate/batch``) over TLS that verifies the server with that CA and
   the URL's host name;
4. checks the answer (the certificate is for its own key and signed by the pinned CA) and only then
   stores ``node.crt``, ``ca.crt`` and ``node.json`` (see ``edge.state``), each atomically.

A refused activation changes nothing already stored. Neither the token nor the secret is ever
printed or put in an error message.

Errors::

    EdgeError
     └── ActivationError        activation failed; the message says what to check
          ├── CaMismatchError    the endpoint's CA is not the one the install command names
          └── ActivationRefused  the cloud answered with an error ({code, message, requestId})
"""

from __future__ import annotations

import hmac
import http.client
import json
import secrets
import socket
import ssl
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.errors import ActivationError, ActivationRefused, CaMismatchError, KeyFileError
from edge.identity import create_key_and_csr
from edge.state import StateDir, write_atomically

__all__ = [
    "Activation",
    "ActivationError",
    "ActivationRefused",
    "BatchCredentials",
    "CaMismatchError",
    "FingerprintSource",
    "TokenCredentials",
    "activate",
    "read_fingerprint",
]

DEFAULT_TIMEOUT: Final = 15.0
_MAX_ANSWER: Final = 1024 * 1024
_PLACEHOLDER_SERIALS: Final = frozenset(
    {"", "0", "none", "n/a", "not specified", "default string", "to be filled by o.e.m.",
     "system serial number", "0123456789"}
)  # fmt: skip


class FingerprintSource(StrEnum):
    """Where a batch device reads the fingerprint that names it."""

    SERIAL_NUMBER = "serialNumber"
    HOSTNAME = "hostname"
    MACHINE_ID = "machineId"


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """The single-use token of a node's install command."""

    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class BatchCredentials:
    """A batch's secret and this device's fingerprint."""

    namespace: str
    batch: str
    fingerprint: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Activation:
    """What an activation stored: who the node is and where its broker is."""

    node_id: str
    broker_host: str
    broker_port: int
    activated_at: str
    state: StateDir
    key_created: bool


@dataclass(frozen=True, slots=True)
class _Endpoint:
    url: str
    host: str
    port: int


def activate(
    url: str,
    ca_sha256: str,
    credentials: TokenCredentials | BatchCredentials,
    state_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Activation:
    """Activate this node against the endpoint at ``url`` and store what it answers."""
    endpoint = _parse_url(url)
    pin = _parse_sha256(ca_sha256)
    ca_pem = _fetch_ca(endpoint, pin, timeout)
    state = StateDir(state_dir)
    key, key_created = _load_or_create_key(state)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))  # the cloud names the node, whatever the CSR says
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    if isinstance(credentials, TokenCredentials):
        path, body = "/v1/activate", {"token": credentials.token, "csr": csr}
    else:
        path = "/v1/activate/batch"
        body = {
            "namespace": credentials.namespace,
            "batch": credentials.batch,
            "fingerprint": credentials.fingerprint,
            "secret": credentials.secret,
            "csr": csr,
        }
    verified = ssl.create_default_context(cadata=ca_pem.decode())
    answer = _request(endpoint, verified, "POST", path, body, timeout)
    return _store(endpoint, pin, key, answer, state, key_created=key_created)


def read_fingerprint(source: FingerprintSource, *, root: Path = Path("/")) -> str:
    """This device's fingerprint from ``source`` (files are read under ``root``)."""
    if source is FingerprintSource.HOSTNAME:
        name = socket.gethostname().strip()
        if not name:
            raise ActivationError(
                "This device has no host name; set one or pass --fingerprint instead."
            )
        return name
    if source is FingerprintSource.MACHINE_ID:
        path = root / "etc" / "machine-id"
        hint = "run 'systemd-machine-id-setup' or pass --fingerprint instead"
    else:
        path = root / "sys" / "class" / "dmi" / "id" / "product_serial"
        hint = "run as root (the file is readable only by root) or pass --fingerprint instead"
    try:
        value = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise ActivationError(
            f"Cannot read the {source} from {path}: {exc.strerror}; {hint}."
        ) from None
    if source is FingerprintSource.SERIAL_NUMBER and value.lower() in _PLACEHOLDER_SERIALS:
        raise ActivationError(
            f"{path} holds {value!r}, a placeholder rather than this device's serial number, "
            "which many devices share; pass --fingerprint or use --fingerprint-from machineId."
        )
    if not value:
        raise ActivationError(f"{path} is empty; {hint}.")
    return value


# -- the steps -----------------------------------------------------------------------------------


def _parse_url(url: str) -> _Endpoint:
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        port = 0
    if (
        parts.scheme != "https"
        or not parts.hostname
        or not port
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ActivationError(
            f"--url {url!r} is not an activation endpoint address; give it as "
            "https://<host>:<port>, as the install command does (e.g. https://cloud.example:9003)."
        )
    return _Endpoint(f"https://{parts.netloc}", parts.hostname, port)


def _parse_sha256(text: str) -> bytes:
    digits = text.strip().lower().replace(":", "")
    if len(digits) != 64 or not set(digits) <= set(string.hexdigits.lower()):
        raise ActivationError(
            "--ca-sha256 must be the CA certificate's SHA-256 as 64 hexadecimal digits (colons "
            "allowed); copy it from the install command."
        )
    return bytes.fromhex(digits)


def _fetch_ca(endpoint: _Endpoint, pin: bytes, timeout: float) -> bytes:
    """The CA's PEM from ``GET /v1/ca``, accepted only if its SHA-256 is ``pin``."""
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # nothing secret goes this way; the pin decides
    answer = _request(endpoint, unverified, "GET", "/v1/ca", None, timeout)
    pem = answer.get("ca")
    try:
        if not isinstance(pem, str):
            raise ValueError("no PEM")
        ca = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ActivationError(
            f"{endpoint.url}/v1/ca did not answer a CA certificate; check that --url is the "
            "cloud's activation endpoint."
        ) from None
    got = ca.fingerprint(hashes.SHA256())
    if not hmac.compare_digest(got, pin):
        raise CaMismatchError(
            f"The CA of {endpoint.url} has SHA-256 {got.hex()}, not {pin.hex()} as --ca-sha256 "
            "says; nothing was sent. Check --url and copy the install command again; if both are "
            "right, someone may be intercepting this connection."
        )
    return ca.public_bytes(serialization.Encoding.PEM)


def _load_or_create_key(state: StateDir) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The node's private key, made (0600) if this node has none yet; and whether it was made."""
    created = False
    if not state.key.exists():
        create_key_and_csr(state.root)
        created = True
    try:
        key = serialization.load_pem_private_key(state.key.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(
            f"Cannot read the node's key {state.key}: {exc.strerror}; run as the user that owns "
            "the state directory."
        ) from None
    except (ValueError, TypeError):
        raise KeyFileError(
            f"{state.key} is not an unencrypted PEM private key; restore the node's key, or move "
            "it away to give the node a new identity."
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(
            f"{state.key} is not an EC key; move it away and activate again to make one."
        )
    return key, created


def _store(
    endpoint: _Endpoint,
    pin: bytes,
    key: ec.EllipticCurvePrivateKey,
    answer: dict[str, Any],
    state: StateDir,
    *,
    key_created: bool,
) -> Activation:
    """Check the activation's answer against this node's key and the pinned CA, then store it."""
    broker = answer.get("broker")
    node_id = answer.get("nodeId")
    try:
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        ca = x509.load_pem_x509_certificate(str(answer["ca"]).encode())
        if not isinstance(node_id, str) or not isinstance(broker, dict):
            raise ValueError("no node id or broker")
        host, port = broker["host"], broker["port"]
        if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("bad broker address")
    except (KeyError, ValueError):
        raise ActivationError(
            f"{endpoint.url} answered the activation with something other than a certificate, "
            "a CA, a node id and a broker address; check that --url is the cloud's activation "
            "endpoint."
        ) from None
    if not hmac.compare_digest(ca.fingerprint(hashes.SHA256()), pin):
        raise CaMismatchError(
            f"{endpoint.url} answered with a CA other than the one --ca-sha256 names; nothing "
            "was stored. Report this to the cloud's operator."
        )
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ActivationError(
            "The certificate the cloud answered is not for this node's key; nothing was stored. "
            "Activate again."
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ActivationError(
            "The certificate the cloud answered is not signed by its CA; nothing was stored. "
            "Report this to the cloud's operator."
        ) from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [name.value for name in names] != [node_id]:
        raise ActivationError(
            f"The certificate the cloud answered does not name node {node_id!r}; nothing was "
            "stored. Report this to the cloud's operator."
        )
    activated_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    node = {
        "nodeId": node_id,
        "broker": {"host": host, "port": port},
        "activatedAt": activated_at,
        "url": endpoint.url,
        # Tells the agent that what it kept (desired state, unsent reports) came from an earlier
        # activation, perhaps as another node or of another cloud: it then starts afresh.
        "activationId": secrets.token_hex(8),
    }
    write_atomically(state.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    write_atomically(state.ca, ca.public_bytes(serialization.Encoding.PEM))
    write_atomically(state.node, (json.dumps(node, indent=2) + "\n").encode())  # last: the marker
    return Activation(node_id, host, port, activated_at, state, key_created)


# -- HTTP ----------------------------------------------------------------------------------------


def _request(
    endpoint: _Endpoint,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    timeout: float,
) -> dict[str, Any]:
    """One request's JSON answer; errors of the network, TLS and the cloud as ActivationError."""
    connection = http.client.HTTPSConnection(
        endpoint.host, endpoint.port, context=context, timeout=timeout
    )
    headers = {"Accept": "application/json", "User-Agent": "pybaetyl-edge"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        status, reason = response.status, response.reason
        data = response.read(_MAX_ANSWER)
    except ssl.SSLCertVerificationError as exc:
        raise ActivationError(
            f"{endpoint.url} did not prove it is the cloud: {exc.verify_message}. Its CA matched "
            "--ca-sha256, so check that --url names a host the cloud's server certificate is "
            "made for (the cloud's api.public_host)."
        ) from None
    except ssl.SSLError as exc:
        raise ActivationError(
            f"The TLS handshake with {endpoint.url} failed ({exc.reason or exc}); check that "
            "--url is the cloud's activation endpoint (HTTPS, port 9003 by default)."
        ) from None
    except ConnectionRefusedError:
        raise ActivationError(
            f"Cannot connect to {endpoint.url}: connection refused. Check --url (copy it from the "
            "install command) and that the cloud is running and reachable from this node."
        ) from None
    except socket.gaierror as exc:
        raise ActivationError(
            f"Cannot resolve {endpoint.host!r}: {exc.strerror}. Check --url and this node's DNS."
        ) from None
    except TimeoutError:
        raise ActivationError(
            f"{endpoint.url} did not answer within {timeout:g} seconds; check that the cloud is "
            "reachable from this node (firewall, proxy) and try again."
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "?"
        raise ActivationError(
            f"Cannot talk to {endpoint.url} ({detail}); check --url and that the cloud is "
            "running and reachable from this node."
        ) from None
    finally:
        connection.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if 200 <= status < 300 and isinstance(answer, dict):
        return answer
    if status == 404 and path == "/v1/ca":
        raise ActivationError(
            f"{endpoint.url} does not serve its CA (GET /v1/ca answered 404); check that --url "
            "is the activation endpoint of a pybaetyl cloud."
        )
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        raise ActivationRefused(
            answer["message"],
            status=status,
            code=str(answer.get("code", "")),
            request_id=answer.get("requestId"),
        )
    raise ActivationError(
        f"{endpoint.url}{path} answered HTTP {status} {reason} without an answer pybaetyl "
        "understands; check that --url is the cloud's activation endpoint."
    )

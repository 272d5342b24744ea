"""The node broker's server certificate: a key made on the node, signed by the cloud's device CA.

:func:`request_certificate` makes an EC P-256 key, sends its CSR and the host names the
certificate must carry (``POST /v1/broker-certificate`` on the activation endpoint, over mutual
TLS with the node's own certificate, exactly like ``/v1/renew``: ``edge.renewal``'s transport),
checks the answer (for the new key, signed by the CA the cloud sent along) and stores
``server.key`` (0600), ``server.crt`` and ``device-ca.crt`` in ``<state>/nodebroker/``. The new
key and certificate are written as ``.new`` files and renamed key first, then certificate;
:func:`finish_interrupted_swap` completes a swap a crash cut between the two renames.

:class:`BrokerCertificate` is what the agent's data plane keeps: whether a certificate is due
(none yet, two thirds of its validity passed, other hosts than asked for), read with
``edge.certfile`` (no ``cryptography``), and the request in a worker thread with a back-off
while the cloud cannot be reached, the cause kept for the report. ``cryptography`` is loaded
only when a certificate is requested, like ``edge.renewal``.

The default hosts (:func:`default_hosts`): the host name, this machine's non-loopback IP
addresses, ``localhost`` and ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edge.certfile import read_certificate, renewal_due
from edge.dataplane.nodebroker import NodeBrokerFiles, write_atomically
from edge.errors import BrokerCertificateError, EdgeError, RenewalError

if TYPE_CHECKING:
    from edge.state import StateDir

__all__ = [
    "BROKER_CERT_THRESHOLD",
    "BrokerCertificate",
    "default_hosts",
    "finish_interrupted_swap",
    "request_certificate",
]

log = logging.getLogger(__name__)

BROKER_CERT_THRESHOLD: Final = 1.0 / 3.0
"""Renew with less than this part of the lifetime left: two thirds of its validity passed."""
HOSTS_FILE: Final = "server.hosts.json"  # the hosts the certificate was asked for
MAX_HOSTS: Final = 16


def default_hosts() -> list[str]:
    """The host name, the non-loopback IP addresses, ``localhost`` and ``127.0.0.1``."""
    hosts: list[str] = []
    name = socket.gethostname()
    if name:
        hosts.append(name)
    addresses: set[str] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(name, None):
            addresses.add(str(info[4][0]))
    # The address of the default route: a UDP connect sends nothing (TEST-NET-1).
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        addresses.add(str(probe.getsockname()[0]))
    for address in sorted(addresses):
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_loopback and not ip.is_unspecified and not ip.is_link_local:
                hosts.append(str(ip))
    names = [h for h in dict.fromkeys(hosts) if h not in ("localhost", "127.0.0.1")]
    return [*names[: MAX_HOSTS - 2], "localhost", "127.0.0.1"]


def finish_interrupted_swap(files: NodeBrokerFiles) -> None:
    """Finish the renames a crash interrupted: the key first, then the certificate."""
    new_key, new_cert = (
        files.key.with_name("server.key.new"),
        files.cert.with_name("server.crt.new"),
    )
    if new_key.exists() and new_cert.exists():
        os.replace(new_key, files.key)
    if new_cert.exists() and not new_key.exists():
        os.replace(new_cert, files.cert)
    new_key.unlink(missing_ok=True)  # a key whose certificate never came


def request_certificate(
    state_dir: Path, files: NodeBrokerFiles, hosts: Sequence[str], *, timeout: float = 10.0
) -> None:
    """Ask the cloud for a server certificate for ``hosts`` and store it (module docstring)."""
    from cryptography import x509  # only when there is a certificate to request
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edge.renewal import _node, _read
    from edge.state import StateDir

    state = StateDir(state_dir)
    try:
        _node_id, url = _node(state)
        ca_pem = _read(state.ca)
    except RenewalError as exc:
        raise BrokerCertificateError(str(exc)) from None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))  # the cloud names the broker, from the node's certificate
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    body = {"csr": csr.decode(), "hosts": list(hosts)}
    answer = _post(state, url, ca_pem, body, timeout)
    try:
        certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        ca_pem = str(answer["ca"]).encode()
        ca = x509.load_pem_x509_certificate(ca_pem)
    except (KeyError, ValueError):
        raise BrokerCertificateError(
            f"{url} answered the broker certificate request without a certificate and CA; check "
            "that the cloud runs a version with the node broker (POST /v1/broker-certificate)."
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise BrokerCertificateError(
            "The broker certificate the cloud answered is not for the new key."
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise BrokerCertificateError(
            "The broker certificate the cloud answered is not signed by the device CA it sent; "
            "report this to the cloud's operator."
        ) from None
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(files.device_ca, ca_pem)
    write_atomically(files.key.with_name("server.key.new"), key_pem, mode=0o600)
    write_atomically(files.cert.with_name("server.crt.new"), certificate.public_bytes(pem))
    finish_interrupted_swap(files)
    write_atomically(files.root / HOSTS_FILE, json.dumps(list(hosts)).encode())


def _post(
    state: StateDir, url: str, ca_pem: bytes, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """``POST /v1/broker-certificate`` over mutual TLS with the node's certificate, like
    ``/v1/renew`` (``edge.activation``'s transport)."""
    from edge.activation import ActivationRefused, _parse_url, _request

    try:
        endpoint = _parse_url(url)
        context = ssl.create_default_context(cadata=ca_pem.decode())
        context.load_cert_chain(state.certificate, state.key)
    except (EdgeError, ssl.SSLError, ValueError) as exc:
        raise BrokerCertificateError(
            f"The node's endpoint {url!r}, certificate, key or CA in {state.root} cannot be used "
            f"({exc}); activate the node again with a new install command."
        ) from None
    try:
        return _request(endpoint, context, "POST", "/v1/broker-certificate", body, timeout)
    except ActivationRefused as exc:
        if exc.status == 404:
            raise BrokerCertificateError(
                f"{url} does not serve POST /v1/broker-certificate (HTTP 404): the cloud is older "
                "than the node broker; upgrade it, or run the agent with --node-broker off."
            ) from None
        raise BrokerCertificateError(
            f"The cloud refused the node broker's certificate (HTTP {exc.status}): {exc}"
        ) from None
    except EdgeError as exc:  # the network, TLS, or the cloud's own refusal
        raise BrokerCertificateError(
            f"The node broker's certificate could not be had from {url}: {exc}"
        ) from None


class BrokerCertificate:
    """The broker's certificate kept valid; ``await ensure()`` it from the data plane's loop."""

    def __init__(
        self,
        state_dir: Path,
        files: NodeBrokerFiles,
        hosts: Sequence[str],
        *,
        backoff: tuple[float, float] = (2.0, 300.0),
        interval: float = 3600.0,
        timeout: float = 10.0,
    ) -> None:
        self._state_dir = state_dir
        self._files = files
        self.hosts = list(hosts) or default_hosts()
        if len(self.hosts) > MAX_HOSTS:
            raise EdgeError(f"Give at most {MAX_HOSTS} --node-broker-host names, not "
                            f"{len(self.hosts)}.")  # fmt: skip
        self._backoff = backoff
        self._interval = interval
        self._timeout = timeout
        self._failures = 0
        self._next = 0.0  # monotonic
        self.error: str | None = None  # why there is no (fresh) certificate, for the report
        finish_interrupted_swap(files)

    @property
    def present(self) -> bool:
        return self._files.cert.exists() and self._files.key.exists()

    def due(self) -> bool:
        """No certificate, two thirds of its validity passed, or other hosts than asked for."""
        if not self.present or not self._files.device_ca.exists():
            return True
        try:
            info = read_certificate(self._files.cert)
        except (OSError, ValueError):
            return True
        try:
            asked = json.loads((self._files.root / HOSTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            asked = None
        if asked != self.hosts:
            return True
        now = datetime.now(UTC)
        return renewal_due(info, now=now, threshold=BROKER_CERT_THRESHOLD)

    async def ensure(self, now: float | None = None) -> bool:
        """Request a certificate when due and the back-off allows; whether a new one came."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return False
        if not self.due():
            self._next = now + self._interval
            return False
        try:
            await asyncio.to_thread(
                request_certificate,
                self._state_dir,
                self._files,
                self.hosts,
                timeout=self._timeout,
            )
        except EdgeError as exc:
            self._failures += 1
            first, largest = self._backoff
            delay = min(first * 2 ** (self._failures - 1), largest)
            delay *= 1 + random.random() / 2  # noqa: S311 - jitter, not security
            self._next = now + delay
            self.error = str(exc)
            log.warning("could not get the node broker's certificate (trying again in %.0f s): %s",
                        delay, exc)  # fmt: skip
            return False
        self._failures = 0
        self.error = None
        self._next = now + self._interval
        log.info("the node broker has a new server certificate for %s", ", ".join(self.hosts))
        return True

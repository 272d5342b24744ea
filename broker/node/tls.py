"""The node broker's TLS: its server certificate, and client certificates optional at the TLS
layer but verified against the device CA or the cloud CA when sent.

Devices with a password send no certificate, so the handshake cannot require one
(``CERT_OPTIONAL``); a certificate that is sent must chain to one of the two CAs, and CONNECT
then decides what it may be (``auth``). There is no CRL: a device certificate is accepted only
while its serial is listed in the configuration. Like ``broker.tls``, the listener keeps a fixed
front context whose SNI callback hands each handshake the current one, so rotated files apply to
new connections without a restart.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptography import x509

from broker.errors import TLSConfigError
from broker.node.config import TLSPaths, stamp

__all__ = ["NodeTLS"]


@dataclass(frozen=True, slots=True)
class _State:
    context: ssl.SSLContext
    device_ca: x509.Certificate
    cloud_ca: x509.Certificate
    paths: TLSPaths
    stamp: tuple[object, ...]


def _stamp(paths: TLSPaths) -> tuple[object, ...]:
    return tuple(stamp(p) for p in (paths.cert, paths.key, paths.device_ca, paths.cloud_ca))


def _context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # A resumed TLS session skips certificate checks: no tickets, no session cache.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _load(paths: TLSPaths) -> _State:
    taken = _stamp(paths)
    ctx = _context()
    try:
        ctx.load_cert_chain(paths.cert, paths.key)
        ctx.load_verify_locations(cafile=paths.device_ca)
        ctx.load_verify_locations(cafile=paths.cloud_ca)
        device_ca = x509.load_pem_x509_certificate(paths.device_ca.read_bytes())
        cloud_ca = x509.load_pem_x509_certificate(paths.cloud_ca.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(
            f"Cannot load the node broker's TLS files ({paths.cert}, {paths.key}, "
            f"{paths.device_ca}, {paths.cloud_ca}): {exc}. The agent writes them under "
            "<state>/nodebroker/; check they exist and the key matches the certificate."
        ) from None
    return _State(ctx, device_ca, cloud_ca, paths, taken)


class NodeTLS:
    """A front context for the listener and the current one swapped in on reload."""

    def __init__(self, paths: TLSPaths) -> None:
        self._state = _load(paths)
        self.front = _context()
        self.front.load_cert_chain(paths.cert, paths.key)
        self.front.load_verify_locations(cafile=paths.device_ca)
        self.front.load_verify_locations(cafile=paths.cloud_ca)
        self.front.sni_callback = self._select

    def _select(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self._state.context

    @property
    def device_ca(self) -> x509.Certificate:
        return self._state.device_ca

    @property
    def cloud_ca(self) -> x509.Certificate:
        return self._state.cloud_ca

    def changed(self, paths: TLSPaths) -> bool:
        return paths != self._state.paths or _stamp(paths) != self._state.stamp

    def reload(self, paths: TLSPaths) -> None:
        """Load the files; on failure the previous context stays and TLSConfigError is raised."""
        self._state = _load(paths)

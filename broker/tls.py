"""The broker's TLS: client certificates required, and reloadable without a restart.

A listening socket keeps the SSLContext it was created with, and loading a new CRL into a live
context only *adds* to its store (OpenSSL then picks by date, so a revocation can be missed). So
the listener gets a fixed *front* context whose SNI callback hands every new handshake the
*current* context, which ``reload`` rebuilds from the files and swaps atomically. The SNI callback
runs for clients that send no server name as well.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from cryptography import x509

from broker.errors import TLSConfigError
from broker.settings import TLSFiles

__all__ = ["ReloadableTLS", "TLSState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TLSState:
    """What one load of the files produced: the context and the revoked serials of its CRL."""

    context: ssl.SSLContext
    revoked: frozenset[int]
    stamp: tuple[tuple[int, int, int], ...]


def _stamp(files: TLSFiles) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in (files.ca, files.cert, files.key, files.crl):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    # A resumed TLS session skips certificate and CRL checks: no tickets, no session cache.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _load(files: TLSFiles) -> TLSState:
    stamp = _stamp(files)
    ctx = _base_context()
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)
        ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
        crl_pem = files.crl.read_bytes()
        crl = x509.load_pem_x509_crl(crl_pem)
        if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            raise ValueError("the CRL is not signed by this CA")
        # If crl.pem is replaced between the two reads, the stamp taken first differs from the
        # file's and the next poll loads it again.
        ctx.load_verify_locations(cafile=files.crl)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise TLSConfigError(
            f"Cannot load the broker's TLS files ({files.cert}, {files.key}, {files.ca}, "
            f"{files.crl}): {exc}. Run 'baetyl certs init' and check the server certificate."
        ) from None
    revoked = frozenset(entry.serial_number for entry in crl)
    return TLSState(context=ctx, revoked=revoked, stamp=stamp)


class ReloadableTLS:
    """A front context for the listeners and a current one swapped in on reload."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._state = _load(files)
        self.front = _base_context()
        # The front context needs a certificate of its own to exist as a server context; the
        # SNI callback replaces it (chain and verify store) before the handshake goes on.
        self.front.load_cert_chain(files.cert, files.key)
        self.front.load_verify_locations(cafile=files.ca)
        self.front.sni_callback = self._select

    @property
    def revoked(self) -> frozenset[int]:
        return self._state.revoked

    def _select(
        self, sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        sslobj.context = self._state.context

    def changed(self) -> bool:
        """Whether any of the files changed since the last load."""
        return _stamp(self.files) != self._state.stamp

    def reload(self) -> frozenset[int]:
        """Re-read every file and swap the context; returns the serials newly revoked.

        A load that fails keeps the previous context (the broker goes on serving) and raises.
        """
        previous = self._state
        self._state = _load(self.files)
        log.info("TLS files reloaded; %d certificates revoked", len(self._state.revoked))
        return self._state.revoked - previous.revoked

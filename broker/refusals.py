"""Refused connections: why, counted per reason, logged per source at a bounded rate.

A refusal happens in the TLS handshake (no certificate, one from another CA, revoked, expired)
or at CONNECT (a certificate without a pybaetyl identity, a client id that is not the
certificate's, a will topic it may not use, another MQTT version, a malformed, late or oversized
CONNECT), or before either (the broker is full). Each one is
counted by reason (``RefusalCounter.counts``, read by the metrics) and logged, so an operator
sees a revoked node retrying or a scan in progress.

A revoked node retries every few seconds and a scan makes thousands of handshakes: one line per
refusal would flood the log. The first refusal of a (source address, reason) pair is logged at
once; the ones after it within the interval are counted and reported as one line with the count
when the interval ends (``flush``, called by the broker's watcher). At most ``MAX_SOURCES`` pairs
are tracked; a spray from more addresses than that is summed under ``other addresses``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["MAX_SOURCES", "RefusalCounter", "RefusalReason", "reason_of"]

log = logging.getLogger(__name__)

MAX_SOURCES = 1024
OTHER_SOURCES = "other addresses"


class RefusalReason(StrEnum):
    # In the TLS handshake
    NO_CERTIFICATE = "no-certificate"  # the client sent none
    UNKNOWN_CA = "unknown-ca"  # not signed by our CA (self-signed, another CA)
    REVOKED = "revoked"  # on our CRL
    EXPIRED = "expired"  # outside its validity
    BAD_CERTIFICATE = "bad-certificate"  # any other verification failure
    TLS_ERROR = "tls-error"  # not TLS, an old version, no common cipher
    HANDSHAKE_TIMEOUT = "handshake-timeout"  # no finished handshake within broker.connect_timeout
    ABORTED = "aborted"  # the client closed the connection during the handshake
    # At CONNECT
    NO_IDENTITY = "no-identity"  # a certificate of our CA without a pybaetyl identity
    CLIENT_ID = "client-id"  # a client id that is not the certificate's
    WILL_TOPIC = "will-topic"  # a will on a topic the identity may not publish to
    PROTOCOL_VERSION = "protocol-version"  # MQTT 5 or 3.1: answered CONNACK 0x01 (broker.connect)
    MALFORMED_CONNECT = "malformed-connect"  # not a CONNECT, or one breaking MQTT 3.1.1's rules
    CONNECT_TIMEOUT = "connect-timeout"  # no whole CONNECT within broker.connect_timeout
    PACKET_TOO_LARGE = "packet-too-large"  # a CONNECT over broker.max_packet_size
    # Before either
    TOO_MANY_CONNECTIONS = "too-many-connections"  # broker.max_connections reached
    TOO_MANY_HANDSHAKES = "too-many-handshakes"  # too many waiting from one address (admission)


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) of a client certificate that fails verification.
_VERIFY_CODES: dict[int, RefusalReason] = {
    2: RefusalReason.UNKNOWN_CA,  # unable to get issuer certificate
    7: RefusalReason.UNKNOWN_CA,  # certificate signature failure
    9: RefusalReason.EXPIRED,  # certificate is not yet valid
    10: RefusalReason.EXPIRED,  # certificate has expired
    18: RefusalReason.UNKNOWN_CA,  # self-signed certificate
    19: RefusalReason.UNKNOWN_CA,  # self-signed certificate in chain
    20: RefusalReason.UNKNOWN_CA,  # unable to get local issuer certificate
    21: RefusalReason.UNKNOWN_CA,  # unable to verify the first certificate
    23: RefusalReason.REVOKED,  # certificate revoked
}


def reason_of(exc: BaseException) -> RefusalReason:
    """Why a server-side TLS handshake failed, from the exception it raised."""
    if isinstance(exc, TimeoutError):
        return RefusalReason.HANDSHAKE_TIMEOUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, RefusalReason.BAD_CERTIFICATE)
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return RefusalReason.NO_CERTIFICATE
        if exc.reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
            # The client refused *our* certificate; nothing about its own.
            return RefusalReason.TLS_ERROR
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return RefusalReason.ABORTED
        return RefusalReason.TLS_ERROR
    return RefusalReason.ABORTED  # a reset or a closed socket


class _Tally:
    __slots__ = ("count", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.count = 0  # refusals after the logged one, not yet reported


class RefusalCounter:
    """Counts refusals by reason and logs them per source address, rate-limited."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        # Keyed by RefusalReason; the node broker (broker/node/) adds reasons of its own.
        self.counts: dict[str, int] = dict.fromkeys(RefusalReason, 0)
        self._clock = clock
        self._tallies: dict[tuple[str, str], _Tally] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def refuse(self, source: str, reason: RefusalReason | str, detail: str = "") -> None:
        """Count one refusal; log it now if it is the first of its source and reason lately."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        key = (source, reason)
        tally = self._tallies.get(key)
        if tally is None and len(self._tallies) >= MAX_SOURCES:
            key = (OTHER_SOURCES, reason)
            tally = self._tallies.get(key)
        if tally is not None:
            tally.count += 1
            return
        self._tallies[key] = _Tally(self._clock())
        log.warning(
            "refused a connection from %s: %s%s", key[0], reason, f" ({detail})" if detail else ""
        )

    def flush(self) -> None:
        """Report the refusals counted over each ended interval, one line per source and reason."""
        now = self._clock()
        for key, tally in list(self._tallies.items()):
            if now - tally.since < self.interval:
                continue
            if tally.count == 0:
                del self._tallies[key]  # quiet for a whole interval: the next one logs at once
                continue
            source, reason = key
            log.warning(
                "refused %d more connections from %s in the last %.0f s: %s",
                tally.count,
                source,
                now - tally.since,
                reason,
            )
            tally.count = 0
            tally.since = now

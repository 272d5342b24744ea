"""The renewer: the agent's certificate renewed before it expires, the session moved onto it.

Checked at start and every ``renew_interval``: once a new certificate is in place (renewed here
or by ``baetyl edge renew``) the cloud link is rebuilt with it and reconnects, the apps
untouched; connected again, the cloud is asked to retire the old certificate. The checks read
the certificate without ``cryptography`` (``edge.certfile``); ``edge.renewal``, and
``cryptography`` with it, is loaded only when there is a renewal to do or a replaced
certificate to retire, so an agent at rest does not hold it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from edge.certfile import (
    NEW_CERT_FILE,
    PREVIOUS_CERT_FILE,
    read_certificate,
    renewal_due,
    serial_of,
)
from edge.errors import EdgeError
from edge.link import CloudLink

__all__ = ["Renewer"]

log = logging.getLogger(__name__)


class Renewer:
    """Renews the node's certificate; ``check`` it from the agent's loop.

    Made before the link: a renewal a crash interrupted is finished before its certificate loads.
    """

    def __init__(self, state_dir: Path, *, interval: float, threshold: float) -> None:
        self._state_dir = state_dir
        self._interval = interval
        self._threshold = threshold
        if (state_dir / NEW_CERT_FILE).exists():
            from edge.renewal import finish_interrupted_renewal

            finish_interrupted_renewal(state_dir)
        self._next_check = 0.0  # monotonic; 0: at start
        self._retire_due = True  # a certificate renewed before a restart may await retiring

    async def check(self, now: float, link: CloudLink) -> None:
        """Renew when due; reconnect with a new certificate; retire the old one once connected."""
        cert = link.identity.cert
        if now >= self._next_check:
            self._next_check = now + self._interval
            self._retire_due = True
            try:
                if self._may_be_due(cert):
                    await asyncio.to_thread(self._renew_if_due)
            except EdgeError as exc:
                log.warning("could not renew the certificate; keeping the current one: %s", exc)
            if serial_of(cert) != link.serial:
                link.reconnect("with the renewed certificate")
        # Only over a session made with the certificate on disk: retiring the one the session
        # uses (renewed meanwhile by 'baetyl edge renew') would have the broker cut it.
        if self._retire_due and link.connected.is_set() and serial_of(cert) == link.serial:
            self._retire_due = False
            previous = self._state_dir / PREVIOUS_CERT_FILE
            try:
                if previous.exists() and await asyncio.to_thread(self._retire):
                    log.info("the cloud retired the certificate the renewal replaced")
            except EdgeError as exc:
                log.warning("could not retire the previous certificate (retrying later): %s", exc)

    def _may_be_due(self, cert: Path) -> bool:
        """Whether ``edge.renewal`` has work: a renewal left half done, or the certificate due.

        A certificate this cannot read counts as due: ``renew_if_due`` then says what is wrong.
        """
        if (self._state_dir / NEW_CERT_FILE).exists():
            return True
        try:
            certificate = read_certificate(cert)
        except (OSError, ValueError):
            return True
        return renewal_due(certificate, now=datetime.now(UTC), threshold=self._threshold)

    def _renew_if_due(self) -> None:
        from edge.renewal import renew_if_due  # loads cryptography: only when there is work

        renew_if_due(self._state_dir, now=datetime.now(UTC), threshold=self._threshold)

    def _retire(self) -> bool:
        from edge.renewal import retire_previous  # loads cryptography: only when there is work

        return retire_previous(self._state_dir)

"""Errors of the embedded broker.

BrokerError
 ├── TLSConfigError       the server certificate, key, CA or CRL cannot be loaded
 └── BrokerStartError     a listener cannot be opened (port taken, bad address)
"""

__all__ = ["BrokerError", "BrokerStartError", "TLSConfigError"]


class BrokerError(Exception):
    """Root of the broker's errors; the message says what to do."""


class TLSConfigError(BrokerError):
    """The server certificate, key, CA or CRL cannot be loaded."""


class BrokerStartError(BrokerError):
    """A listener cannot be opened (port taken, bad address)."""

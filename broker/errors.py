"""Errors of the embedded broker and of the node broker (broker/node/).

BrokerError
 ├── TLSConfigError       the server certificate, key, CA or CRL cannot be loaded
 ├── BrokerStartError     a listener cannot be opened (port taken, bad address)
 ├── NodeConfigError      the node broker's config.json is missing, not JSON or not valid
 └── SpoolError           the node broker's spool database cannot be opened or written
"""

__all__ = ["BrokerError", "BrokerStartError", "NodeConfigError", "SpoolError", "TLSConfigError"]


class BrokerError(Exception):
    """Root of the broker's errors; the message says what to do."""


class TLSConfigError(BrokerError):
    """The server certificate, key, CA or CRL cannot be loaded."""


class BrokerStartError(BrokerError):
    """A listener cannot be opened (port taken, bad address)."""


class NodeConfigError(BrokerError):
    """The node broker's configuration file is missing, not JSON, or breaks its schema."""


class SpoolError(BrokerError):
    """The node broker's spool database cannot be opened or written."""

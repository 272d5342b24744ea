"""The edge agent. Imports only the pure protocol part of ``shadow``; never server code."""

from edge.activation import (
    Activation,
    ActivationError,
    ActivationRefused,
    BatchCredentials,
    CaMismatchError,
    FingerprintSource,
    TokenCredentials,
    activate,
    read_fingerprint,
)
from edge.errors import EdgeError, KeyFileError
from edge.identity import NodeKeyFiles, create_key_and_csr
from edge.state import StateDir

__all__ = [
    "Activation",
    "ActivationError",
    "ActivationRefused",
    "BatchCredentials",
    "CaMismatchError",
    "EdgeError",
    "FingerprintSource",
    "KeyFileError",
    "NodeKeyFiles",
    "StateDir",
    "TokenCredentials",
    "activate",
    "create_key_and_csr",
    "read_fingerprint",
]

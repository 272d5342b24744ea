"""The edge agent. Imports only the pure protocol part of ``shadow``; never server code.

Its errors are one tree, drawn in ``edge.errors``. The names below are loaded on first use:
``baetyl`` imports ``edge.cli`` for its parser, and a command that does not need the node's key
or the activation client (``baetyl --help``, the agent at rest) does not load ``cryptography``
for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.activation import (
        Activation,
        BatchCredentials,
        FingerprintSource,
        TokenCredentials,
        activate,
        read_fingerprint,
    )
    from edge.errors import (
        ActivationError,
        ActivationRefused,
        CaMismatchError,
        EdgeError,
        KeyFileError,
    )
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

_MODULES = {
    "ActivationError": "edge.errors",
    "ActivationRefused": "edge.errors",
    "CaMismatchError": "edge.errors",
    "EdgeError": "edge.errors",
    "KeyFileError": "edge.errors",
    "NodeKeyFiles": "edge.identity",
    "create_key_and_csr": "edge.identity",
    "StateDir": "edge.state",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES.get(name, "edge.activation")), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value

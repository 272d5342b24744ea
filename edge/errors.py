"""Errors of the edge agent.

EdgeError
 └── KeyFileError   the node's key or CSR files cannot be written or read safely
"""

__all__ = ["EdgeError", "KeyFileError"]


class EdgeError(Exception):
    """Root of the edge agent's errors; the message says what to do."""


class KeyFileError(EdgeError):
    """The node's key or CSR files cannot be written or read safely."""

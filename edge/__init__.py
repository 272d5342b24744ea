"""The edge agent. Imports only the pure protocol part of ``shadow``; never server code."""

from edge.errors import EdgeError, KeyFileError
from edge.identity import NodeKeyFiles, create_key_and_csr

__all__ = ["EdgeError", "KeyFileError", "NodeKeyFiles", "create_key_and_csr"]

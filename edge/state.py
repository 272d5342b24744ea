"""The node's state directory: which file holds what, and how files are replaced safely.

::

    <state dir>/          0700
      node.key            0600  the node's private key; made here, never sent anywhere
      node.csr            0644  the last certificate signing request made from it
      node.crt            0644  the node's certificate, from activation
      ca.crt              0644  the cloud's CA, pinned by the SHA-256 of the install command
      node.json           0644  {nodeId, broker: {host, port}, activatedAt, url, activationId}
      agent.json          0600  the agent's memory (edge.agent): desired document and fetched
                                specs, secret values in clear (secret data, registry passwords,
                                certificate keys), so a node restarting offline still runs its apps

Every file but the key is replaced atomically (a temporary file in the same directory, then a
rename), so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.errors import KeyFileError
from edge.identity import CSR_FILE, KEY_FILE

__all__ = ["StateDir", "write_atomically"]


@dataclass(frozen=True, slots=True)
class StateDir:
    """The paths of one node's state directory."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / KEY_FILE

    @property
    def csr(self) -> Path:
        return self.root / CSR_FILE

    @property
    def certificate(self) -> Path:
        return self.root / "node.crt"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def node(self) -> Path:
        return self.root / "node.json"


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (permissions ``mode``) in one rename."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise KeyFileError(
            f"Cannot write in {path.parent}: {exc.strerror}; check that the state directory is "
            "writable by this user."
        ) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    except OSError as exc:
        raise KeyFileError(f"Cannot write {path}: {exc.strerror}.") from None
    finally:
        Path(temporary).unlink(missing_ok=True)  # gone already once renamed

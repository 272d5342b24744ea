"""The node broker's status file, read by the agent for its reports (PROTOCOL.md "Node broker").

``{"devices": {name: {"online": bool, "since": epoch s | null}}, "spool": {"rows", "bytes"},
"refused": {reason: n}}``: every configured device appears (offline, ``since`` null, if never
seen). Written atomically (a temporary file renamed over it), at most every 0.5 s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["render", "write_atomically"]


def render(
    devices: Mapping[str, object],
    presence: Mapping[str, tuple[bool, float]],
    rows: int,
    size: int,
    refused: Mapping[str, int],
) -> dict[str, object]:
    return {
        "devices": {
            name: {
                "online": presence.get(name, (False, None))[0],
                "since": presence.get(name, (False, None))[1],
            }
            for name in sorted(devices)
        },
        "spool": {"rows": rows, "bytes": size},
        "refused": {str(reason): n for reason, n in sorted(refused.items()) if n},
    }


def write_atomically(path: Path, document: object) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    data = json.dumps(document, sort_keys=True).encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)

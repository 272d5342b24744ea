"""``baetyl edge``: the node side. Reads only the edge's own state directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import EdgeError
from edge.identity import create_key_and_csr

__all__ = ["EdgeError", "add_parser"]

DEFAULT_STATE_DIR = Path("baetyl-edge")


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "edge",
        help="the edge agent: the node's key, CSR and (later) activation and sync",
        description="Commands that run on an edge node. They use the node's own state directory "
        "and never the cloud's data directory.",
    )
    parser.set_defaults(edge_command=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    keygen = commands.add_parser(
        "keygen",
        help="generate the node's private key (0600) and a CSR",
        description="Generate an EC P-256 private key that never leaves this node, and a "
        "certificate signing request to hand to the cloud ('baetyl certs issue node --csr').",
    )
    keygen.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the node's state directory (default: ./{DEFAULT_STATE_DIR})",
    )
    keygen.add_argument(
        "--common-name",
        default=None,
        help="put this CN in the CSR (optional; the cloud decides the identity either way)",
    )
    keygen.set_defaults(func=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    files = create_key_and_csr(args.state_dir, common_name=args.common_name)
    print(f"private key: {files.key} (0600, stays on this node)")
    print(f"CSR:         {files.csr}")
    return 0

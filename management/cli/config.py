"""``baetyl config``: show the effective configuration after file, environment and flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from management.config import Settings

__all__ = ["add_parser"]


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "config",
        help="show the effective configuration",
        description="Print the configuration the cloud would run with: defaults, then "
        "<data-dir>/baetyl.toml, then BAETYL_<SECTION>__<KEY> variables, then --set overrides.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    show = commands.add_parser(
        "show",
        help="print the effective configuration as JSON",
        description="Print the effective configuration as JSON; exits 1 naming the bad key "
        "if the configuration is invalid.",
    )
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    tree = _plain(dataclasses.asdict(settings))
    tree["database"]["url"] = settings.database.redacted()  # never print a password
    print(json.dumps(tree, indent=2, sort_keys=True))
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value

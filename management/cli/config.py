"""``baetyl config``: show the effective configuration after file, environment and flags.

``baetyl config show --defaults --format toml > baetyl-data/baetyl.toml`` writes a starting
configuration file: every key with its default, to edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import Any

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
    show.add_argument(
        "--defaults",
        action="store_true",
        help="the built-in defaults, without baetyl.toml, BAETYL_* variables or --set",
    )
    show.add_argument(
        "--format",
        choices=["json", "toml"],
        default="json",
        help="json (default), or toml as baetyl.toml takes it: "
        "'baetyl config show --defaults --format toml > baetyl-data/baetyl.toml' starts one",
    )
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from management.config import Settings

    settings: Settings = args.settings
    if args.defaults:
        settings = Settings(data_dir=settings.data_dir)
    tree = _plain(dataclasses.asdict(settings))
    tree["database"]["url"] = settings.database.redacted()  # never print a password
    if args.format == "toml":
        del tree["data_dir"]  # chosen with --data-dir or BAETYL_DATA_DIR, never in the file
        print(_toml(tree), end="")
    else:
        print(json.dumps(tree, indent=2, sort_keys=True))
    return 0


def _toml(tree: dict[str, Any]) -> str:
    """``tree`` as TOML: its plain keys first, then one table per section (no nested tables)."""
    lines = [_toml_line(key, value) for key, value in sorted(tree.items())
             if not isinstance(value, dict)]  # fmt: skip
    for section, keys in sorted(tree.items()):
        if isinstance(keys, dict):
            lines += ["", f"[{section}]"]
            lines += [_toml_line(key, value) for key, value in sorted(keys.items())]
    return "\n".join(lines) + "\n"


def _toml_line(key: str, value: Any) -> str:
    if value is None:  # TOML has no null: an unset key stays out of the file, shown commented
        return f"# {key} =   (unset)"
    return f"{key} = {_toml_value(value)}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for the escapes of astral characters.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")  # pragma: no cover


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

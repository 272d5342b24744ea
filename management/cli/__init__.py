"""The ``baetyl`` command: one entry point, a group of subcommands per component.

Every group lives in its own module and adds itself with ``add_parser``; handlers take the parsed
arguments (with ``data_dir`` and ``settings`` filled in by the root) and return an exit code.
User mistakes surface as one ``error:`` line and a non-zero exit, never as a traceback.

Imports are per command: the group modules import only ``argparse`` and the standard library at
their top, and each handler imports what it runs (the broker, the PKI, the store, the agent) when
it is called. So ``baetyl --help`` or ``baetyl node list`` loads no broker, ORM or Kubernetes
client, and the edge agent none of the cloud (tests/management/test_cli_imports.py holds this).

The global options (``--data-dir``, ``--config``, ``--set``, ``--log-level``) go before the
command or after it: ``baetyl --set broker.port=18883 up`` and ``baetyl up --set
broker.port=18883`` are the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge import cli as edge_cli
from management.cli import broker as broker_cli
from management.cli import certs as certs_cli
from management.cli import client as client_cli
from management.cli import config as config_cli
from management.cli import tokens as tokens_cli
from management.cli.pipes import quiet_when_reader_leaves

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
DISTRIBUTION = "pybaetyl"
# The errors the root prints as one line, by the public module that exports each. An error of a
# module not imported yet cannot have been raised, so the root never imports one to catch it.
_USER_ERRORS = (
    ("management.errors", "ManagementError"),
    ("certs", "CertsError"),
    ("broker", "BrokerError"),
    ("shadow", "ShadowError"),
    ("edge", "EdgeError"),
    ("management.cli.apiclient", "ClientError"),
)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib import metadata

        try:
            version = metadata.version(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            version = f"(unknown: the {DISTRIBUTION} distribution is not installed)"
        print(f"{parser.prog} {version}")
        parser.exit()


def _add_cloud_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, late: bool
) -> None:
    """--data-dir, --config and --set: where the cloud's configuration comes from.

    On the root they have their defaults; after a command (``late``) they default to nothing, so
    that they change only what they name, and ``--set`` goes to its own list, added after the
    root's (argparse gives a command's options a fresh namespace, which would replace the list).
    """
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS if late else None,
        help="directory holding the CA, server certificates, database and baetyl.toml "
        "(default: $BAETYL_DATA_DIR or ./baetyl-data)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS if late else None,
        help="configuration file (default: $BAETYL_CONFIG or <data-dir>/baetyl.toml)",
    )
    parser.add_argument(
        "--set",
        dest="late_overrides" if late else "overrides",
        action="append",
        default=argparse.SUPPRESS if late else [],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set broker.port=8884 (repeatable)",
    )


def _add_log_level(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, late: bool
) -> None:
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=argparse.SUPPRESS if late else None,
        help="logging verbosity (default: the log_level key, info)",
    )


def _add_late_options(
    parser: argparse.ArgumentParser, words: tuple[str, ...], *, reads_settings: bool
) -> None:
    """Give every command under ``parser`` the global options it uses, after its own words."""
    reads_settings = reads_settings and not (
        parser.get_default("edge_command") or parser.get_default("client_command")
    )
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not commands:
        command = " ".join(words)
        group = parser.add_argument_group(
            "global options",
            f"The options of 'baetyl --help'; they may come before the command too, as in "
            f"'baetyl --log-level debug {command}'.",
        )
        if reads_settings:
            _add_cloud_options(group, late=True)
        _add_log_level(group, late=True)
        return
    seen: set[int] = set()
    for action in commands:
        for word, sub in action.choices.items():
            if id(sub) not in seen:  # an alias names a parser twice
                seen.add(id(sub))
                _add_late_options(sub, (*words, word), reads_settings=reads_settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baetyl",
        description=(
            "pybaetyl: an MQTT-first edge computing platform. The cloud side (broker, PKI, "
            "shadow service, management API) runs with 'baetyl up'; nodes run the edge agent "
            "with 'baetyl edge'. The options below may also follow the command, as in "
            "'baetyl up --set broker.port=18883'."
        ),
    )
    parser.add_argument("--version", action=_Version, help="print the version of pybaetyl and exit")
    _add_cloud_options(parser, late=False)
    _add_log_level(parser, late=False)
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    broker_cli.add_up_parser(groups)
    broker_cli.add_parser(groups)
    certs_cli.add_parser(groups)
    edge_cli.add_parser(groups)
    config_cli.add_parser(groups)
    tokens_cli.add_parser(groups)
    client_cli.add_parser(groups)  # after config_cli: 'config' gets list/get/apply too
    _add_late_options(parser, (), reads_settings=True)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "DEBUG":
        # amqtt and its state machine narrate every connection at INFO; ours say what matters.
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _is_user_error(exc: BaseException) -> bool:
    for module, name in _USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


@quiet_when_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.overrides = [*args.overrides, *getattr(args, "late_overrides", [])]
    try:
        if not getattr(args, "edge_command", False) and not getattr(args, "client_command", False):
            # Edge commands read their own state directory, client commands talk to the API:
            # neither reads the cloud's configuration (nor imports the broker it names).
            from management.config import load_settings

            overrides = list(args.overrides)
            if args.log_level:
                overrides.append(f"log_level={args.log_level}")
            args.settings = load_settings(
                data_dir=args.data_dir, config_file=args.config, overrides=overrides
            )
            args.data_dir = args.settings.data_dir
            level = args.settings.log_level.upper()
        else:
            level = (args.log_level or "info").upper()
        _configure_logging(level)
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``baetyl`` command: one entry point, a group of subcommands per component.

Every group lives in its own module and adds itself with ``add_parser``; handlers take the parsed
arguments (with ``data_dir`` and ``settings`` filled in by the root) and return an exit code.
User mistakes surface as one ``error:`` line and a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from broker import BrokerError
from certs import CertsError
from edge import cli as edge_cli
from management.cli import broker as broker_cli
from management.cli import certs as certs_cli
from management.cli import client as client_cli
from management.cli import config as config_cli
from management.cli import tokens as tokens_cli
from management.cli.pipes import quiet_when_reader_leaves
from management.config import ConfigError, load_settings
from shadow import ShadowError

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baetyl",
        description=(
            "pybaetyl: an MQTT-first edge computing platform. The cloud side (broker, PKI) runs "
            "with "
            "'baetyl up'; nodes run the edge agent with 'baetyl edge'."
        ),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory holding the CA, server certificates, database and baetyl.toml "
        "(default: $BAETYL_DATA_DIR or ./baetyl-data)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $BAETYL_CONFIG or <data-dir>/baetyl.toml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set broker.port=8884 (repeatable)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="logging verbosity (default: the log_level key, info)",
    )
    groups = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    broker_cli.add_up_parser(groups)
    broker_cli.add_parser(groups)
    certs_cli.add_parser(groups)
    edge_cli.add_parser(groups)
    config_cli.add_parser(groups)
    tokens_cli.add_parser(groups)
    client_cli.add_parser(groups)  # after config_cli: 'config' gets list/get/apply too
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level != "DEBUG":
        # amqtt and its state machine narrate every connection at INFO; ours say what matters.
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@quiet_when_reader_leaves
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not getattr(args, "edge_command", False) and not getattr(args, "client_command", False):
            # Edge commands read their own state directory, client commands talk to the API:
            # neither reads the cloud's configuration.
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
    except (
        ConfigError,
        CertsError,
        BrokerError,
        ShadowError,
        edge_cli.EdgeError,
        client_cli.ClientError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``python -m broker.node --config PATH``: run the node broker (exit 2 on a bad configuration)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from broker.errors import BrokerError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m broker.node", description="The node broker: devices' MQTT on a node."
    )
    parser.add_argument(
        "--config", required=True, type=Path, help="config.json written by the agent"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    # Imported here: loading amqtt and cryptography is not needed to print --help.
    from broker.node.config import NodeConfig
    from broker.node.server import NodeBrokerServer

    try:
        config = NodeConfig.load(args.config)
        server = NodeBrokerServer(args.config, config)
        asyncio.run(server.run())
    except BrokerError as exc:
        print(f"node broker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

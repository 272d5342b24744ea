"""``baetyl edge``: the node side. Reads only the edge's own state directory.

The parser needs only the standard library; each command imports what it runs when it runs
(``cryptography`` for keys and certificates, paho and the engine for the agent), so the agent's
process holds no more than the agent needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edge.certfile import DEFAULT_THRESHOLD
from edge.errors import EdgeError

if TYPE_CHECKING:
    from edge.activation import BatchCredentials, TokenCredentials
    from edge.dataplane.nodebroker import NodeBrokerSettings

__all__ = ["EdgeError", "add_parser"]

DEFAULT_STATE_DIR = Path("baetyl-edge")
# The values of edge.activation.FingerprintSource, spelled out so that building the parser does
# not load cryptography with that module (tests/edge/test_activation_cli.py checks them).
FINGERPRINT_SOURCES = ("serialNumber", "hostname", "machineId")


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "edge",
        help="the node side: its key, activation, certificate renewal, and the agent that "
        "runs its apps as the cloud desires",
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
    _add_activate_parser(commands)
    _add_renew_parser(commands)
    _add_run_parser(commands)


def _add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run the agent: keep the node's apps as the cloud desires, report back",
        description="Run the edge agent in the foreground until Ctrl-C or SIGTERM: one mTLS "
        "session to the cloud (reconnecting with backoff and jitter), the desired apps applied "
        "by the engine, node and app status reported. Apps keep running while the agent or the "
        "network is down, and are adopted again when it restarts.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the node's state directory (default: ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--engine",
        choices=["native", "kube"],
        default="native",
        help="native: processes on this machine (default); kube: Kubernetes objects",
    )
    parser.add_argument(
        "--kube-namespace", default="baetyl-edge", help="the namespace of the kube engine"
    )
    parser.add_argument(
        "--report-interval",
        type=float,
        default=20.0,
        help="seconds between full reports (default: 20)",
    )
    parser.add_argument(
        "--resync-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds between applying the desired apps again although nothing changed: an app "
        "that could not start is retried, a Kubernetes object deleted by hand comes back "
        "(default: 60)",
    )
    parser.add_argument(
        "--functions-port",
        type=int,
        default=50080,
        help="the agent's local port (on 127.0.0.1): POST /<app>/<function> calls a function "
        "(native engine only), GET and PATCH /node/properties read the node's properties and "
        "report the apps' own; 0 picks a free port (default: 50080)",
    )
    parser.add_argument(
        "--keepalive",
        type=_keepalive_seconds,
        default=30,
        metavar="SECONDS",
        help="the MQTT keepalive when the cloud desires none (node property baetyl.keepalive); "
        "a half-open link shows the node offline after ceil(1.5 x keepalive) s "
        "(5 to 600, default: 30)",
    )
    _add_node_broker_flags(parser)
    renewal = parser.add_argument_group(
        "certificate renewal (advanced)",
        "The agent renews the node's certificate (new key, mutual TLS with the current one) when "
        "less than --renew-threshold of its lifetime is left, checking at start and every "
        "--renew-interval seconds. With a threshold of 1 every check renews.",
    )
    renewal.add_argument(
        "--renew-interval",
        type=_positive_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="seconds between renewal checks (default: 3600)",
    )
    renewal.add_argument(
        "--renew-threshold",
        type=_fraction,
        default=DEFAULT_THRESHOLD,
        metavar="FRACTION",
        help="renew with less than this part (0..1) of the lifetime left "
        f"(default: {DEFAULT_THRESHOLD})",
    )
    parser.set_defaults(func=_run)


def _add_node_broker_flags(parser: argparse.ArgumentParser) -> None:
    broker = parser.add_argument_group(
        "node broker",
        "The node broker (MQTT over TLS for the node's devices, a system app 'baetyl-broker' the "
        "agent runs through its engine) and the spool of the messages the routes carry.",
    )
    broker.add_argument(
        "--node-broker",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: run it when the cloud places a device or a route on this node (default); "
        "on: always; off: never",
    )
    broker.add_argument(
        "--node-broker-port",
        type=_port,
        default=50010,
        metavar="PORT",
        help="the TLS port devices connect to (default: 50010)",
    )
    broker.add_argument(
        "--node-broker-bind",
        default="0.0.0.0",  # noqa: S104 - the broker is for the node's LAN
        metavar="ADDRESS",
        help="the address the TLS listener binds (default: 0.0.0.0, every interface)",
    )
    broker.add_argument(
        "--node-broker-local-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="also listen in plain MQTT on 127.0.0.1:PORT for the node's own apps (default: no)",
    )
    broker.add_argument(
        "--node-broker-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name or IP address the broker's certificate names (repeat it; default: the "
        "host name, its non-loopback IP addresses, localhost and 127.0.0.1)",
    )
    broker.add_argument(
        "--node-broker-image",
        default=None,
        metavar="IMAGE",
        help="kube engine: the image the broker runs in, the agent's own (default: "
        "$BAETYL_EDGE_IMAGE; the helm chart passes the flag)",
    )
    broker.add_argument(
        "--spool-max-bytes",
        type=_size,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help="the spool's bound: past it the oldest messages are dropped, and counted "
        "(suffixes K, M, G: powers of 1024; default: 256M)",
    )
    broker.add_argument(
        "--spool-max-age",
        type=_duration,
        default=7 * 24 * 3600.0,
        metavar="AGE",
        help="messages older than this are dropped from the spool, and counted "
        "(seconds, or with a suffix s, m, h, d; default: 7d)",
    )


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    if not (number.isascii() and number.isdigit() and int(number) > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number of bytes, e.g. 268435456 or 256M"
        )
    return int(number) * unit


def _duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration, e.g. 3600 or 7d")
    return value


def node_broker_settings(args: argparse.Namespace, state_dir: Path) -> NodeBrokerSettings:
    """The node broker's settings from ``baetyl edge run``'s flags."""
    import os

    from edge.dataplane.nodebroker import NodeBrokerMode, NodeBrokerSettings

    return NodeBrokerSettings(
        mode=NodeBrokerMode(args.node_broker),
        port=args.node_broker_port,
        bind=args.node_broker_bind,
        local_port=args.node_broker_local_port,
        hosts=tuple(args.node_broker_host),
        spool_max_bytes=args.spool_max_bytes,
        spool_max_age=args.spool_max_age,
        image=args.node_broker_image or os.environ.get("BAETYL_EDGE_IMAGE") or None,
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _keepalive_seconds(text: str) -> int:
    from edge.properties import KEEPALIVE_RANGE

    low, high = KEEPALIVE_RANGE
    if not (text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of seconds from {low} to {high}"
        )
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1")
    return value


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging
    import signal

    from edge.agent import Agent, AgentConfig
    from edge.engines import Engine
    from edge.engines.native import NativeEngine
    from edge.functions import FunctionLocator, FunctionProxy
    from edge.properties import property_routes

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        engine: Engine
        if args.engine == "kube":
            from edge.engines.kube import KubeEngine

            engine = KubeEngine(namespace=args.kube_namespace)
        else:
            engine = NativeEngine(args.state_dir / "native")
        config = AgentConfig(
            args.state_dir,
            report_interval=args.report_interval,
            resync_interval=args.resync_interval,
            renew_interval=args.renew_interval,
            renew_threshold=args.renew_threshold,
            keepalive=args.keepalive,
            node_broker=node_broker_settings(args, args.state_dir),
            engine_kind=args.engine,
        )
        agent = Agent(config, engine)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(engine)
            # Native: the engine knows its function apps; kube: the endpoint serves properties.
            locator = engine if isinstance(engine, NativeEngine) else _NoFunctions()
            proxy = FunctionProxy(
                locator, port=args.functions_port, routes=lambda: property_routes(agent.properties)
            )
            try:
                await stack.enter_async_context(proxy)
                print(f"function proxy on 127.0.0.1:{proxy.port}", flush=True)
                agent.dataplane.function_url = f"http://127.0.0.1:{proxy.port}"  # routes call it
            except OSError as exc:  # the apps matter more than the proxy: run without it
                logging.getLogger(__name__).error(
                    "the agent's local endpoint cannot listen on 127.0.0.1:%d (%s); apps run, "
                    "but cannot call functions or report node properties until the agent "
                    "restarts with a free --functions-port",
                    args.functions_port, exc,
                )  # fmt: skip
            await stack.enter_async_context(agent)
            print(f"agent running as {agent.identity.node_id}; Ctrl-C to stop", flush=True)
            await agent.run(stop)

    class _NoFunctions(FunctionLocator):
        def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
            raise LookupError(app)  # the kube engine's functions run in pods, not here

    asyncio.run(main())
    return 0


def _add_renew_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "renew",
        help="renew the node's certificate (new key) if it is due, or now with --force",
        description="Renew the node's certificate when less than 30%% of its lifetime is left "
        "(or now, with --force): make a new key, send its CSR over mutual TLS with the current "
        "certificate, and swap key and certificate once the new one is checked. The old "
        "certificate stays valid, so a running agent keeps its session; the agent reconnects "
        "with the new one at its next renewal check and then has the cloud retire the old one.",
    )
    parser.add_argument(
        "--force", action="store_true", help="renew now, however long the certificate has left"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the node's state directory (default: ./{DEFAULT_STATE_DIR})",
    )
    parser.set_defaults(func=_renew)


def _renew(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from cryptography import x509

    from edge.renewal import renew_if_due
    from edge.state import StateDir

    state = StateDir(args.state_dir)
    renewed = renew_if_due(args.state_dir, now=datetime.now(UTC), force=args.force)
    certificate = x509.load_pem_x509_certificate(state.certificate.read_bytes())
    until = f"{certificate.not_valid_after_utc:%Y-%m-%d}"
    if not renewed:
        print(f"not renewed: the certificate is valid until {until} and not due yet "
              "(use --force to renew now)")  # fmt: skip
        return 0
    print(f"renewed: certificate {certificate.serial_number:X}, valid until {until}")
    print(f"private key: {state.key} (new, 0600, stays on this node)")
    print(f"certificate: {state.certificate}")
    return 0


def _add_activate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "activate",
        help="activate this node: trade the install token (or a batch secret) for a certificate",
        description="Activate this node. Fetch the cloud's CA and accept it only if its SHA-256 "
        "is --ca-sha256, then send a CSR of the node's key (made here if the node has none, 0600) "
        "with the install token, or with a batch's secret and this device's fingerprint, over TLS "
        "verified with that CA. Store the certificate, the CA and the broker's address in the "
        "state directory. Safe to re-run: the key is reused and a new token replaces the "
        "certificate.",
    )
    parser.add_argument(
        "--url", required=True, help="the activation endpoint, e.g. https://cloud.example:9003"
    )
    parser.add_argument(
        "--ca-sha256",
        required=True,
        metavar="HEX",
        help="SHA-256 of the cloud's CA certificate (DER), from the install command",
    )
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--token", help="the single-use token of the node's install command")
    way.add_argument("--batch", metavar="NAME", help="activate as a device of this batch")
    batch = parser.add_argument_group("batch activation (with --batch)")
    batch.add_argument("--namespace", metavar="NS", help="the batch's namespace")
    batch.add_argument("--secret", help="the batch's secret")
    fingerprint = batch.add_mutually_exclusive_group()
    fingerprint.add_argument("--fingerprint", help="this device's fingerprint, given as is")
    fingerprint.add_argument(
        "--fingerprint-from",
        choices=FINGERPRINT_SOURCES,
        help="read the fingerprint from the serial number (DMI), host name or /etc/machine-id",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the node's state directory (default: ./{DEFAULT_STATE_DIR})",
    )
    parser.set_defaults(func=_activate)


def _credentials(args: argparse.Namespace) -> TokenCredentials | BatchCredentials:
    from edge.activation import (
        ActivationError,
        BatchCredentials,
        FingerprintSource,
        TokenCredentials,
        read_fingerprint,
    )

    batch_options = {
        "--namespace": args.namespace,
        "--secret": args.secret,
        "--fingerprint": args.fingerprint,
        "--fingerprint-from": args.fingerprint_from,
    }
    if args.token is not None:
        extra = [option for option, value in batch_options.items() if value is not None]
        if extra:
            raise ActivationError(
                f"{', '.join(extra)} go with --batch, not --token; give one way to activate."
            )
        return TokenCredentials(args.token)
    missing = [option for option in ("--namespace", "--secret") if batch_options[option] is None]
    if args.fingerprint is None and args.fingerprint_from is None:
        missing.append("--fingerprint or --fingerprint-from")
    if missing:
        raise ActivationError(f"--batch needs {', '.join(missing)} as well.")
    fingerprint = args.fingerprint
    if fingerprint is None:
        fingerprint = read_fingerprint(FingerprintSource(args.fingerprint_from))
    return BatchCredentials(args.namespace, args.batch, fingerprint, args.secret)


def _activate(args: argparse.Namespace) -> int:
    from edge.activation import activate

    result = activate(args.url, args.ca_sha256, _credentials(args), args.state_dir)
    state = result.state
    made = "made now" if result.key_created else "kept"
    print(f"activated node {result.node_id}")
    print(f"private key: {state.key} (0600, {made}, stays on this node)")
    print(f"certificate: {state.certificate}")
    print(f"CA:          {state.ca}")
    print(f"node:        {state.node} (broker {result.broker_host}:{result.broker_port})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from edge.identity import create_key_and_csr

    files = create_key_and_csr(args.state_dir, common_name=args.common_name)
    print(f"private key: {files.key} (0600, stays on this node)")
    print(f"CSR:         {files.csr}")
    return 0

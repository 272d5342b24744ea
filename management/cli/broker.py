"""``baetyl up`` (the whole cloud) and ``baetyl broker`` (the broker alone)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the handlers import them: building the parser loads none of the cloud
    from broker import TLSFiles
    from certs import CertificateAuthority
    from management.config import Settings

__all__ = ["add_parser", "add_up_parser"]

log = logging.getLogger(__name__)

CRL_REFRESH_INTERVAL = 3600.0


def add_up_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "up",
        help="run the cloud on embedded defaults (generated CA, embedded broker)",
        description="Run the cloud in one process: on first start it creates the data directory, "
        "the CA and the server certificate, then serves MQTT over mTLS (port 8883). "
        "One process serves a data directory: a second one on it is refused (replicas on an "
        "external broker excepted). Stops cleanly on Ctrl-C or SIGTERM, saving the broker's "
        "persistent sessions and retained messages for the next start (in <data>/broker/).",
    )
    parser.set_defaults(func=_run, cloud=True)


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "broker",
        help="run the embedded MQTT broker alone",
        description="The embedded MQTT broker: client certificates required, identity and "
        "topic access from the certificate, revocation without a restart.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="run the broker in the foreground",
        description="Run only the broker (with the CA and server certificate it needs) until "
        "Ctrl-C or SIGTERM, which save its persistent sessions for the next start.",
    )
    run.set_defaults(func=_run, cloud=False)
    export = commands.add_parser(
        "export-config",
        help="write the configuration of an external broker (Mosquitto or EMQX) for the cloud",
        description="Write the files that give nodes on an external MQTT broker the identity "
        "and topic access they have on the embedded broker: the broker's server certificate "
        "(issued by our CA), the CA, the CRL, the broker configuration and its ACL. Nodes "
        "connect to --node-port; the cloud replicas (bus.mode=external) to --cloud-port.",
    )
    flavour = export.add_mutually_exclusive_group(required=True)
    flavour.add_argument("--mosquitto", action="store_true", help="Mosquitto 2.x")
    flavour.add_argument("--emqx", action="store_true", help="EMQX 5.x")
    export.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    export.add_argument(
        "--broker-dir",
        metavar="PATH",
        help="where the files will be on the broker's host (default: --out, absolute)",
    )
    export.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address of the broker, for its certificate (repeatable; "
        "default: pki.server_dns_names and pki.server_ips)",
    )
    export.add_argument("--node-port", type=_port, default=8883, metavar="PORT")
    export.add_argument("--cloud-port", type=_port, default=8884, metavar="PORT")
    export.add_argument(
        "--bind",
        default="0.0.0.0",  # noqa: S104 # nodes connect from the network
        metavar="ADDRESS",
        help="address of both listeners",
    )
    export.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="NAME",
        help="an operator allowed to read $baetyl/# (repeatable)",
    )
    export.add_argument("--force", action="store_true", help="overwrite files already there")
    export.set_defaults(func=_export_config)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _export_config(args: argparse.Namespace) -> int:
    from certs import CertsError, Identity, write_private_file, write_public_file
    from management.bootstrap import ensure_pki
    from management.brokerconfig import (
        BrokerLayout,
        emqx_acl,
        emqx_config,
        mosquitto_acl,
        mosquitto_config,
    )

    settings: Settings = args.settings
    out: Path = args.out
    names = ("mosquitto.conf", "acl") if args.mosquitto else ("emqx.conf", "acl.conf")
    taken = [name for name in (*names, "server.key") if (out / name).exists()]
    if taken and not args.force:
        raise CertsError(
            f"{out} already holds {', '.join(taken)}; pass --force to replace them (the broker "
            "gets a new server certificate), or choose another --out."
        )
    for name in args.operator:
        Identity.operator(name)  # refuses a name that is not a DNS label, with the reason
    dns_names, ips = [], []
    for host in args.host or [*settings.pki.server_dns_names, *settings.pki.server_ips]:
        try:
            ips.append(ipaddress.ip_address(host))
        except ValueError:
            dns_names.append(host)
    ca, _files = ensure_pki(settings)
    issued = ca.issue_server(
        "pybaetyl broker",
        dns_names=dns_names,
        ip_addresses=ips,
        validity_days=settings.pki.server_cert_days,
    )
    assert issued.private_key_pem is not None
    out.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_private_file(out / "server.key", issued.private_key_pem)
    write_public_file(out / "server.crt", issued.chain_pem)
    write_public_file(out / "ca.crt", ca.certificate_pem)
    write_public_file(out / "crl.pem", ca.crl_pem())
    layout = BrokerLayout(
        directory=args.broker_dir or str(out.resolve()),
        node_port=args.node_port,
        cloud_port=args.cloud_port,
        bind=args.bind,
        cloud_bind=args.bind,
        operators=tuple(args.operator),
    )
    if args.mosquitto:
        files = {"mosquitto.conf": mosquitto_config(layout), "acl": mosquitto_acl(layout)}
    else:
        files = {"emqx.conf": emqx_config(layout), "acl.conf": emqx_acl(layout)}
    for name, text in files.items():
        write_public_file(out / name, text.encode())
    print(f"wrote {', '.join(files)}, server.crt, server.key, ca.crt, crl.pem to {out}")
    print(
        f"Nodes connect to port {args.node_port}. Run each cloud replica with:\n"
        f"  --set bus.mode=external --set bus.url=mqtts://<broker>:{args.cloud_port} "
        f"--set bus.public_address=<broker>:{args.node_port}"
    )
    if os.name == "posix" and os.geteuid() == 0:
        print("server.key is readable by root only: chown it to the broker's user (mosquitto).")
    print("The broker reads crl.pem at start: after revoking a node, copy the CA's crl.pem and "
          "restart (Mosquitto) the broker.")  # fmt: skip
    return 0


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from management.bootstrap import ensure_pki, serving
    from management.config import BusMode

    settings: Settings = args.settings
    # An embedded broker is this process's alone; replicas on an external broker share the
    # data directory (and the database) on purpose.
    alone = not args.cloud or settings.bus.mode is BusMode.EMBEDDED
    with serving(settings) if alone else contextlib.nullcontext():
        ca, files = ensure_pki(settings)
        asyncio.run(_serve(settings, ca, files, cloud=args.cloud))
    return 0


async def _serve(
    settings: Settings, ca: CertificateAuthority, files: TLSFiles, *, cloud: bool
) -> None:
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from broker import EmbeddedBroker, freeze_long_lived
    from management.cloud import Cloud  # the whole server stack: loaded only to serve
    from management.config import BusMode

    async with contextlib.AsyncExitStack() as stack:
        if cloud:
            running = await stack.enter_async_context(Cloud(settings, ca, files))
            ports = running.ports
        else:
            broker = await stack.enter_async_context(
                EmbeddedBroker(settings.broker, files, sessions=settings.broker_sessions_file)
            )
            ports = broker.ports
        print(f"pybaetyl is up. Data directory: {settings.data_dir.resolve()}", flush=True)
        if cloud:
            print(f"  store      {settings.database.redacted() or settings.database_url}")
            if settings.bus.mode is BusMode.EXTERNAL:
                host, port = settings.bus.node_address
                print(f"  bus        {settings.bus.url} (external; nodes connect to {host}:{port})")
        hosts = {
            "local": "127.0.0.1",
            "api": settings.api.host,
            "activation": settings.api.activation_host,
        }
        for name, port in sorted(ports.items()):
            print(f"  {name:10} {hosts.get(name, settings.broker.host)}:{port}")
        if cloud:
            print(
                f"  API docs   http://{settings.api.host}:{ports['api']}/docs; create a token "
                "with 'baetyl tokens create'."
            )
        print("Press Ctrl-C to stop.", flush=True)
        background = [asyncio.create_task(_refresh_crl(ca))]
        if settings.broker.gc_freeze_interval:
            background.append(
                asyncio.create_task(
                    freeze_long_lived(
                        settings.broker.gc_freeze_interval,
                        settings.broker.gc_full_collect_interval,
                    )
                )
            )
        try:
            await stop.wait()
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    print("pybaetyl stopped.", flush=True)


async def _refresh_crl(ca: CertificateAuthority) -> None:
    """Keep crl.pem inside its validity: TLS refuses every client once the CRL has expired."""
    import asyncio

    while True:
        await asyncio.sleep(CRL_REFRESH_INTERVAL)
        try:
            await asyncio.to_thread(ca.crl_pem)
        except Exception:
            log.exception("could not refresh the CRL; retrying in an hour")

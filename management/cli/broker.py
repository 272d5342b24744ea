"""``baetyl up`` (the whole cloud) and ``baetyl broker`` (the broker alone)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from broker import EmbeddedBroker, TLSFiles, freeze_long_lived
from certs import CertificateAuthority
from management.bootstrap import ensure_pki
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
        "Stops cleanly on Ctrl-C or SIGTERM.",
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
        "Ctrl-C or SIGTERM.",
    )
    run.set_defaults(func=_run, cloud=False)


def _run(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    ca, files = ensure_pki(settings)
    asyncio.run(_serve(settings, ca, files, cloud=args.cloud))
    return 0


async def _serve(
    settings: Settings, ca: CertificateAuthority, files: TLSFiles, *, cloud: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from management.cloud import Cloud  # the whole server stack: loaded only to serve

    async with contextlib.AsyncExitStack() as stack:
        if cloud:
            running = await stack.enter_async_context(Cloud(settings, ca, files))
            ports = running.ports
        else:
            broker = await stack.enter_async_context(EmbeddedBroker(settings.broker, files))
            ports = broker.ports
        print(f"pybaetyl is up. Data directory: {settings.data_dir.resolve()}", flush=True)
        if cloud:
            print(f"  store      {settings.database.redacted() or settings.database_url}")
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
    while True:
        await asyncio.sleep(CRL_REFRESH_INTERVAL)
        try:
            await asyncio.to_thread(ca.crl_pem)
        except Exception:
            log.exception("could not refresh the CRL; retrying in an hour")

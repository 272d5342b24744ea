"""``baetyl tokens``: API tokens scoped to a namespace, made on the cloud's own machine.

Whoever can run this can read the database, so it needs no token itself; it writes the token's
hash to the database and prints the token once.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the handlers import the store when they run
    from management.config import Settings
    from management.store import ApiTokenRecord

__all__ = ["add_parser"]

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = groups.add_parser(
        "tokens",
        help="create, list and revoke API tokens",
        description="API tokens for the management API, each scoped to one namespace (tenant). "
        "A token sees only its namespace's resources.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    create = commands.add_parser(
        "create",
        help="create a token (printed once) and its namespace if new",
        description="Create an API token for NAMESPACE; the token is printed once and only "
        "its hash is stored.",
    )
    create.add_argument("--namespace", default="default", help="the tenant (default: default)")
    create.add_argument("--name", default="admin", help="what the token is for (default: admin)")
    create.add_argument("--expires-in-days", type=int, default=None, help="expiry (default: never)")
    create.set_defaults(func=_create)
    listing = commands.add_parser("list", help="list a namespace's tokens (never the secrets)")
    listing.add_argument("--namespace", default="default")
    listing.set_defaults(func=_list)
    revoke = commands.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", help="the token id (the 12 hex digits after 'bt_')")
    revoke.add_argument("--namespace", default="default")
    revoke.set_defaults(func=_revoke)


def _namespace(text: str) -> str:
    from management.config import ConfigError

    if not _NAMESPACE.match(text):
        raise ConfigError(
            f"{text!r} is not a namespace name: use 1 to 63 lower-case letters, digits and '-'."
        )
    return text


def _create(args: argparse.Namespace) -> int:
    import asyncio

    from management.config import ConfigError
    from management.store import ApiTokenRecord, ResourceStore, all_migrations
    from management.tokens import new_api_token
    from shadow.server import Database

    settings: Settings = args.settings
    namespace = _namespace(args.namespace)
    days = args.expires_in_days
    if days is not None and not 1 <= days <= 3650:
        raise ConfigError("--expires-in-days must be from 1 to 3650.")

    async def run() -> str:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Database.open(settings.database_url, migrations=all_migrations()) as db:
            store = ResourceStore(db)
            await store.ensure_namespace(namespace)
            token_id, token, digest = new_api_token()
            now = int(time.time() * 1000)
            expires = None if days is None else now + days * 86_400_000
            await store.add_token(
                ApiTokenRecord(token_id, namespace, args.name, digest, now, expires)
            )
            return token

    token = asyncio.run(run())
    print(f"token for namespace {namespace} (shown once; keep it secret):")
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    import asyncio

    from management.store import ResourceStore, all_migrations
    from shadow.server import Database

    settings: Settings = args.settings
    namespace = _namespace(args.namespace)

    async def run() -> list[ApiTokenRecord]:
        async with Database.open(settings.database_url, migrations=all_migrations()) as db:
            return await ResourceStore(db).tokens(namespace)

    records = asyncio.run(run())
    print(f"{'ID':14} {'NAME':24} {'CREATED':20} EXPIRES")
    for record in records:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.created_at / 1000))
        expires = (
            "never"
            if record.expires_at is None
            else time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.expires_at / 1000))
        )
        print(f"{record.id:14} {record.name:24} {created:20} {expires}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    import asyncio

    from management.config import ConfigError
    from management.store import ResourceStore, all_migrations
    from shadow.server import Database

    settings: Settings = args.settings
    namespace = _namespace(args.namespace)

    async def run() -> bool:
        async with Database.open(settings.database_url, migrations=all_migrations()) as db:
            return await ResourceStore(db).revoke_token(namespace, args.id)

    if not asyncio.run(run()):
        raise ConfigError(f"There is no token {args.id!r} in namespace {namespace}.")
    print(f"revoked token {args.id}")
    return 0

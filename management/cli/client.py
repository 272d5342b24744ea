"""``baetyl node|app|config|secret|registry|certificate ...`` and ``baetyl apply``: the API client.

kubectl-like commands over the management REST API, synchronous, on ``urllib``::

    baetyl app list [--selector S] [--name N] [-o table|json|yaml]
    baetyl app get NAME [-o ...]
    baetyl node get NAME             # the node, then its apps' status and cause as reported
    baetyl app create -f FILE        # POST each object
    baetyl app apply -f FILE         # POST, or PUT if it exists (nothing if it is the same)
    baetyl app delete NAME [NAME...]
    baetyl node init NAME            # the install command for the device
    baetyl node revoke-init NAME     # the install commands issued so far stop working
    baetyl device password NAME      # a new password for the device, printed once
    baetyl device password NAME --remove
    baetyl apply -f FILE             # objects of any kind, each with kind: App, Config, ...

The API address and token come from ``--api-url``/``--token``, else ``BAETYL_API_URL`` /
``BAETYL_API_TOKEN``, else the client configuration file (``$BAETYL_CLIENT_CONFIG`` or
``~/.config/baetyl/client.toml``: ``url = "..."`` and ``token = "..."``). The token is sent in the
``Authorization`` header and never printed. These commands never read the cloud's configuration.

The client under them and its errors (``ClientError`` and the rest) are in ``apiclient.py``,
re-exported here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

# The API's schemas are imported where used: 'baetyl --help' builds this parser without them.
from management.cli.apiclient import (
    CONFIG_ENV,
    DEFAULT_URL,
    TOKEN_ENV,
    URL_ENV,
    ApiClient,
    ApiFailure,
    ClientError,
    Endpoint,
    Unreachable,
    quote,
    resolve_endpoint,
)
from management.cli.resources import (
    APPLY_ORDER,
    KINDS,
    Manifest,
    ManifestFileError,
    ResourceKind,
    load_manifests,
    render,
    render_app_statuses,
    render_devices,
    render_properties,
    render_routes,
    render_table,
    server_fields,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_URL",
    "TOKEN_ENV",
    "URL_ENV",
    "ApiClient",
    "ApiFailure",
    "ClientError",
    "Endpoint",
    "Unreachable",
    "add_parser",
    "connection_options",
    "resolve_endpoint",
]

EXIT_FAILED = 1

T = TypeVar("T")


# -- commands --------------------------------------------------------------------------------------


def connection_options() -> argparse.ArgumentParser:
    """A parent parser of ``--api-url`` and ``--token`` (every command that talks to the API)."""
    connection = argparse.ArgumentParser(add_help=False)
    where = connection.add_argument_group("API")
    where.add_argument(
        "--api-url",
        default=None,
        help=f"the management API (default: ${URL_ENV}, the client config, or {DEFAULT_URL})",
    )
    where.add_argument(
        "--token",
        default=None,
        help=f"the API token (default: ${TOKEN_ENV} or the client config; "
        f"${CONFIG_ENV} or ~/.config/baetyl/client.toml)",
    )
    return connection


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``baetyl <kind> ...`` for each kind and ``baetyl apply``; after ``config``'s group."""
    connection = connection_options()
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "yaml"],
        default="table",
        help="table (default), or the API's JSON as json or yaml",
    )
    manifest = argparse.ArgumentParser(add_help=False)
    manifest.add_argument(
        "-f",
        "--filename",
        dest="file",
        required=True,
        metavar="FILE",
        help="a YAML or JSON file of one or more objects ('-' for stdin)",
    )

    def leaf(
        commands: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help: str,
        *parents: argparse.ArgumentParser,
        kind: ResourceKind | None = None,
    ) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".",
            parents=[*parents, connection],
        )  # fmt: skip
        parser.set_defaults(func=handler, kind=kind, client_command=True)
        return parser

    for kind in KINDS.values():
        commands = _commands(groups, kind)
        plural = kind.collection
        listing = leaf(commands, "list", _list, f"list {plural}", output, kind=kind)
        listing.add_argument(
            "--selector", "-l", default="", help="a label selector, e.g. 'site=paris,!test'"
        )
        listing.add_argument("--name", default="", help="only names containing this text")
        get = leaf(commands, "get", _get, f"show one {kind.word}", output, kind=kind)
        get.add_argument("name", metavar="NAME")
        leaf(commands, "create", _create, f"create the {plural} in FILE", manifest, kind=kind)
        leaf(
            commands, "apply", _apply, f"create the {plural} in FILE, or update them",
            manifest, kind=kind,
        )  # fmt: skip
        delete = leaf(commands, "delete", _delete, f"delete {plural} by name", kind=kind)
        delete.add_argument("names", nargs="+", metavar="NAME")
        if kind.word == "node":
            init = leaf(
                commands, "init", _init, "print the command that installs and activates a node",
                output, kind=kind,
            )  # fmt: skip
            init.add_argument("name", metavar="NAME")
            revoke = leaf(
                commands, "revoke-init", _revoke_init,
                "revoke the install commands of a node issued so far (a leaked one, say)",
                kind=kind,
            )  # fmt: skip
            revoke.add_argument("name", metavar="NAME")
        if kind.word == "device":
            password = leaf(
                commands, "password", _password,
                "give a device a new random password (printed once), or --remove it",
                kind=kind,
            )  # fmt: skip
            password.add_argument("name", metavar="NAME")
            password.add_argument(
                "--remove", action="store_true", help="remove the password instead"
            )
    leaf(
        groups,
        "apply",
        _apply,
        "create or update the resources in FILE, each object naming its kind",
        manifest,
    )


def _commands(
    groups: argparse._SubParsersAction[argparse.ArgumentParser], kind: ResourceKind
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The subcommands of ``baetyl <kind>``; ``config`` joins the group that has ``show``."""
    existing = groups.choices.get(kind.word)
    if existing is None:
        parser = groups.add_parser(kind.word, help=kind.help, description=kind.help.capitalize())
        return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for action in existing._actions:
        if isinstance(action, argparse._SubParsersAction):
            existing.description = (
                f"{existing.description or ''} The list, get, create, apply and delete "
                f"commands manage {kind.collection} through the management API."
            ).strip()
            return action
    raise RuntimeError(f"the '{kind.word}' command has no subcommands to join")


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(resolve_endpoint(args.api_url, args.token))


def _show(kind: ResourceKind, items: list[dict[str, Any]], value: Any, output: str) -> None:
    if output in ("json", "yaml"):
        print(render(value, "json" if output == "json" else "yaml"))
    elif items:
        print(render_table(kind, items))
    else:
        print(f"No {kind.collection} found.", file=sys.stderr)


def _list(args: argparse.Namespace) -> int:
    kind: ResourceKind = args.kind
    items = _client(args).list(kind.collection, selector=args.selector, name=args.name)
    _show(kind, items, {"total": len(items), "items": items}, args.output)
    return 0


def _get(args: argparse.Namespace) -> int:
    kind: ResourceKind = args.kind
    item = _client(args).request("GET", f"/{kind.collection}/{quote(args.name)}")
    _show(kind, [item], item, args.output)
    if kind.word == "node" and args.output == "table" and (properties := render_properties(item)):
        print(f"\n{properties}")
    if kind.word == "node" and args.output == "table" and (apps := render_app_statuses(item)):
        print(f"\n{apps}")  # each app's status and cause, as the node last reported them
    if kind.word == "node" and args.output == "table" and (devices := render_devices(item)):
        print(f"\n{devices}")  # its devices' presence, as the node last reported it
    if kind.word == "node" and args.output == "table" and (routes := render_routes(item)):
        print(f"\n{routes}")  # its routes' counts and last error, as the node last reported them
    if kind.word == "device" and args.output == "table" and item.get("certificates"):
        rows = [["CERTIFICATE", "NOT-AFTER"]] + [
            [str(c.get("serial")), str(c.get("notAfter"))] for c in item["certificates"]
        ]
        width = max(len(row[0]) for row in rows)
        print("\n" + "\n".join(f"{row[0].ljust(width)}   {row[1]}" for row in rows))
    return 0


def _init(args: argparse.Namespace) -> int:
    answer = _client(args).request("GET", f"/nodes/{quote(args.name)}/init")
    if args.output != "table":
        print(render(answer, "json" if args.output == "json" else "yaml"))
        return 0
    print(
        f"# Run this on node {args.name} before {answer.get('expiresAt')}; it works once.",
        file=sys.stderr,
    )
    print(answer["cmd"])
    return 0


def _password(args: argparse.Namespace) -> int:
    path = f"/devices/{quote(args.name)}/password"
    if args.remove:
        _client(args).request("DELETE", path)
        print(f"removed the password of device {args.name}")
        return 0
    answer = _client(args).request("POST", path)
    print(
        f"# The password of device {args.name}: shown this once, only its hash is kept. Run "
        f"'baetyl device password {args.name}' again for a new one.",
        file=sys.stderr,
    )
    print(f"username: {answer['username']}")
    print(f"password: {answer['password']}")
    return 0


def _revoke_init(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/nodes/{quote(args.name)}/init")
    print(f"revoked the install commands of node {args.name}; 'baetyl node init "
          f"{args.name}' makes a new one")  # fmt: skip
    return 0


def _delete(args: argparse.Namespace) -> int:
    kind: ResourceKind = args.kind
    client = _client(args)

    def delete(name: str) -> str:
        client.request("DELETE", f"/{kind.collection}/{quote(name)}")
        return "deleted"

    return _each([(f"{kind.word}/{name}", name) for name in args.names], delete)


def _create(args: argparse.Namespace) -> int:
    manifests = _manifests(args)
    client = _client(args)

    def create(manifest: Manifest) -> str:
        client.request("POST", f"/{manifest.kind.collection}", manifest.body)
        return "created"

    return _each([(m.ref, m) for m in manifests], create)


def _apply(args: argparse.Namespace) -> int:
    manifests = _manifests(args)
    client = _client(args)

    def apply(manifest: Manifest) -> str:
        collection = manifest.kind.collection
        current = client.get(collection, manifest.name)
        if current is None:
            client.request("POST", f"/{collection}", manifest.body)
            return "created"
        if _same(manifest, current):
            return "unchanged"
        client.request(
            "PUT",
            f"/{collection}/{quote(manifest.name)}",
            manifest.body,
            headers={"If-Match": f'"{current.get("version", "")}"'},
        )
        return "configured"

    return _each([(m.ref, m) for m in manifests], apply)


def _manifests(args: argparse.Namespace) -> list[Manifest]:
    try:
        manifests = load_manifests(args.file, args.kind)
    except ManifestFileError as exc:
        raise ClientError(str(exc)) from None
    # Configs and secrets before the apps that mount them, whatever the file's order.
    return sorted(manifests, key=lambda m: APPLY_ORDER.index(m.kind.word))


def _same(manifest: Manifest, current: Mapping[str, Any]) -> bool:
    """Whether writing ``manifest`` would store what is there (write-only fields never are)."""
    from management.schemas import ValidationFailed, validate

    try:
        wanted = validate(manifest.kind.write_schema, manifest.body)
    except ValidationFailed:
        return False  # the API says what is wrong
    wanted.setdefault("labels", {})
    wanted.setdefault("description", "")
    fields = server_fields(manifest.kind)
    return wanted == {k: v for k, v in current.items() if k not in fields}


def _each(work: list[tuple[str, T]], action: Callable[[T], str]) -> int:
    """Run ``action`` on each item, printing ``<kind>/<name> <result>``; go on after API errors."""
    failed = 0
    for ref, item in work:
        try:
            result = action(item)
        except ApiFailure as exc:
            failed += 1
            print(f"error: {ref}: {exc}", file=sys.stderr)
            continue
        print(f"{ref} {result}")
    return EXIT_FAILED if failed else 0

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
    baetyl apply -f FILE             # objects of any kind, each with kind: App, Config, ...

The API address and token come from ``--api-url``/``--token``, else ``BAETYL_API_URL`` /
``BAETYL_API_TOKEN``, else the client configuration file (``$BAETYL_CLIENT_CONFIG`` or
``~/.config/baetyl/client.toml``: ``url = "..."`` and ``token = "..."``). The token is sent in the
``Authorization`` header and never printed. These commands never read the cloud's configuration.

Errors (not under ``ManagementError``: see ``management/errors.py``)::

    ClientError            what the root prints as one 'error:' line
    ├── ApiFailure         the API answered with an error: its message and request id
    └── Unreachable        nothing usable answers at the API address
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# urllib.request (and the ssl it loads), tomllib and the API's schemas are imported where used:
# 'baetyl --help' builds this parser and needs none of them.
from management.cli.resources import (
    APPLY_ORDER,
    KINDS,
    Manifest,
    ManifestFileError,
    ResourceKind,
    load_manifests,
    render,
    render_app_statuses,
    render_properties,
    render_table,
    server_fields,
)

__all__ = [
    "DEFAULT_URL",
    "ApiClient",
    "ApiFailure",
    "ClientError",
    "Endpoint",
    "Unreachable",
    "add_parser",
    "resolve_endpoint",
]

DEFAULT_URL = "http://127.0.0.1:9004"
URL_ENV, TOKEN_ENV, CONFIG_ENV = "BAETYL_API_URL", "BAETYL_API_TOKEN", "BAETYL_CLIENT_CONFIG"
PAGE_SIZE = 200  # the API's largest page
TIMEOUT = 30.0
EXIT_FAILED = 1

T = TypeVar("T")


class ClientError(Exception):
    """A client command cannot go on; the message says what to do."""


class ApiFailure(ClientError):
    """The API refused a request: its status, code, message and request id."""

    def __init__(
        self, status: int, code: str, message: str, request_id: str, field: str | None = None
    ) -> None:
        if field and field not in message:
            message = f"{field}: {message}"
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (requestId {self.request_id})" if self.request_id else self.message


class Unreachable(ClientError):
    """Nothing usable answers at the API address."""


# -- where the API is ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The API's base URL and the bearer token to send (left out of ``repr``)."""

    url: str
    token: str | None = field(default=None, repr=False)
    config_file: Path | None = None  # where url/token may be set, named in messages


def config_path(environ: Mapping[str, str]) -> Path:
    """The client configuration file: ``$BAETYL_CLIENT_CONFIG`` or ~/.config/baetyl/client.toml."""
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "baetyl" / "client.toml"


def _read_config(path: Path, *, required: bool) -> dict[str, str]:
    import tomllib

    try:
        with path.open("rb") as file:
            tree = tomllib.load(file)
    except FileNotFoundError:
        if required:
            raise ClientError(
                f'{CONFIG_ENV} names {path}, which does not exist; create it with url = "..." '
                f'and token = "...", or unset {CONFIG_ENV}.'
            ) from None
        return {}
    except OSError as exc:
        raise ClientError(f"Cannot read {path} ({exc.strerror}); check its permissions.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientError(f"{path} is not valid TOML ({exc}); fix it and try again.") from None
    for key, value in tree.items():
        if key not in ("url", "token"):
            raise ClientError(f"{path}: unknown key {key!r}; only 'url' and 'token' are allowed.")
        if not isinstance(value, str):
            raise ClientError(f'{path}: {key} must be a string, e.g. {key} = "...".')
    return dict(tree)


def resolve_endpoint(
    url: str | None, token: str | None, environ: Mapping[str, str] | None = None
) -> Endpoint:
    """The API address and token: flags, else environment, else the client configuration file."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    url = url or environ.get(URL_ENV) or None
    token = token or environ.get(TOKEN_ENV) or None
    if url is None or token is None:
        config = _read_config(path, required=bool(environ.get(CONFIG_ENV)))
        url = url or config.get("url") or None
        token = token or config.get("token") or None
    url = (url or DEFAULT_URL).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(
            f"The API URL {url!r} is not an http(s) address; give one like {DEFAULT_URL}."
        )
    return Endpoint(url, token, path)


# -- the HTTP client -------------------------------------------------------------------------------


class ApiClient:
    """Synchronous JSON requests to the management API, errors turned into :class:`ClientError`."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The JSON answer (None for an empty one) of ``method`` on ``/v1<path>``."""
        import http.client
        import urllib.error
        import urllib.request

        if self.endpoint.token is None:
            raise ClientError(
                f'No API token is set; pass --token, set {TOKEN_ENV}, or put token = "..." in '
                f"{self.endpoint.config_file}. Create one on the cloud with 'baetyl tokens create'."
            )
        url = f"{self.endpoint.url}/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(  # noqa: S310 # the scheme is checked in resolve_endpoint
            url,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {self.endpoint.token}",
                "Accept": "application/json",
                **({} if body is None else {"Content-Type": "application/json"}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw: bytes = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._failure(exc.code, exc.reason, exc.read()) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise Unreachable(
                f"{self.endpoint.url} answered {method} {path} with something other than JSON; "
                f"check that the API URL names the management API, e.g. {DEFAULT_URL}."
            ) from None

    def _failure(self, status: int, reason: str, raw: bytes) -> ClientError:
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            return ApiFailure(
                status,
                str(payload.get("code", "")),
                payload["message"],
                str(payload.get("requestId", "")),
                payload.get("field") if isinstance(payload.get("field"), str) else None,
            )
        return Unreachable(
            f"{self.endpoint.url} answered HTTP {status} {reason} without an API error; check "
            f"that the API URL names the management API, e.g. {DEFAULT_URL}."
        )

    def _unreachable(self, reason: object) -> Unreachable:
        url = self.endpoint.url
        if isinstance(reason, ConnectionRefusedError):
            return Unreachable(
                f"Nothing answers at {url} (connection refused); check that the cloud runs "
                f"('baetyl up') and that --api-url, {URL_ENV} or the url in "
                f"{self.endpoint.config_file} names its API address."
            )
        if isinstance(reason, TimeoutError):
            return Unreachable(
                f"The API at {url} did not answer within {self.timeout:g} s; check the address "
                "and that the cloud is not overloaded."
            )
        return Unreachable(
            f"Cannot reach the API at {url} ({reason}); check the address, your network and, "
            "for https, the server's certificate."
        )

    def list(self, collection: str, *, selector: str = "", name: str = "") -> list[dict[str, Any]]:
        """Every item of ``collection`` matching ``selector`` and ``name``, all pages read."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            query: dict[str, str | int] = {"pageNo": page, "pageSize": PAGE_SIZE}
            if selector:
                query["selector"] = selector
            if name:
                query["name"] = name
            answer = self.request("GET", f"/{collection}", query=query)
            if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
                raise Unreachable(
                    f"{self.endpoint.url} did not answer with a list of {collection}; check that "
                    "the API URL names the management API."
                )
            items.extend(answer["items"])
            if not answer["items"] or len(items) >= int(answer.get("total", 0)):
                return items
            page += 1

    def get(self, collection: str, name: str) -> dict[str, Any] | None:
        """The resource, or None if there is none by that name."""
        try:
            answer: dict[str, Any] = self.request("GET", f"/{collection}/{_quote(name)}")
        except ApiFailure as exc:
            if exc.status == 404:
                return None
            raise
        return answer


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# -- commands --------------------------------------------------------------------------------------


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``baetyl <kind> ...`` for each kind and ``baetyl apply``; after ``config``'s group."""
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
    item = _client(args).request("GET", f"/{kind.collection}/{_quote(args.name)}")
    _show(kind, [item], item, args.output)
    if kind.word == "node" and args.output == "table" and (properties := render_properties(item)):
        print(f"\n{properties}")
    if kind.word == "node" and args.output == "table" and (apps := render_app_statuses(item)):
        print(f"\n{apps}")  # each app's status and cause, as the node last reported them
    return 0


def _init(args: argparse.Namespace) -> int:
    answer = _client(args).request("GET", f"/nodes/{_quote(args.name)}/init")
    if args.output != "table":
        print(render(answer, "json" if args.output == "json" else "yaml"))
        return 0
    print(
        f"# Run this on node {args.name} before {answer.get('expiresAt')}; it works once.",
        file=sys.stderr,
    )
    print(answer["cmd"])
    return 0


def _revoke_init(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/nodes/{_quote(args.name)}/init")
    print(f"revoked the install commands of node {args.name}; 'baetyl node init "
          f"{args.name}' makes a new one")  # fmt: skip
    return 0


def _delete(args: argparse.Namespace) -> int:
    kind: ResourceKind = args.kind
    client = _client(args)

    def delete(name: str) -> str:
        client.request("DELETE", f"/{kind.collection}/{_quote(name)}")
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
            f"/{collection}/{_quote(manifest.name)}",
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

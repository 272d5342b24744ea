"""The management API's client: where the API is (flags, environment, client configuration file),
synchronous JSON requests on ``urllib``, and the errors the commands of ``client.py`` raise.

The API address and token come from ``--api-url``/``--token``, else ``BAETYL_API_URL`` /
``BAETYL_API_TOKEN``, else the client configuration file (``$BAETYL_CLIENT_CONFIG`` or
``~/.config/baetyl/client.toml``: ``url = "..."`` and ``token = "..."``). The token is sent in the
``Authorization`` header and never printed.

Errors (not under ``ManagementError``: see ``management/errors.py``)::

    ClientError            what the root prints as one 'error:' line
    ├── ApiFailure         the API answered with an error: its message and request id
    └── Unreachable        nothing usable answers at the API address
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# urllib.request (and the ssl it loads) and tomllib are imported where used: 'baetyl --help'
# builds the commands' parser from client.py, which imports this module, and needs neither.

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
    "config_path",
    "quote",
    "resolve_endpoint",
]

DEFAULT_URL = "http://127.0.0.1:9004"
URL_ENV, TOKEN_ENV, CONFIG_ENV = "BAETYL_API_URL", "BAETYL_API_TOKEN", "BAETYL_CLIENT_CONFIG"
PAGE_SIZE = 200  # the API's largest page
TIMEOUT = 30.0


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
            answer: dict[str, Any] = self.request("GET", f"/{collection}/{quote(name)}")
        except ApiFailure as exc:
            if exc.status == 404:
                return None
            raise
        return answer


def quote(name: str) -> str:
    """``name`` as one segment of a URL path."""
    return urllib.parse.quote(name, safe="")

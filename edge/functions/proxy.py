"""The node's local function proxy: ``POST /<app>/<function>`` forwarded to that app's runtime.

Programs on the node call the functions of the node's function apps through one address
(``127.0.0.1:50080`` unless configured). The proxy asks a :class:`FunctionLocator` (the native
engine) where the runtime serving the function listens and forwards the body and its content
type (none if the caller sent none); the runtime's answer comes back as it is. The proxy's own
errors are JSON ``{"code", "message"}``: 404 ``UnknownFunction`` (no such app or function on
this node), 503 ``FunctionUnavailable`` (its runtime is not listening, e.g. starting or
restarting) and 504 ``FunctionTimeout`` (no answer within the proxy's timeout).

The same address serves the agent's other local routes (``routes``, e.g. the node properties
of ``edge.properties``), matched before the function route; they use methods other than POST,
so an app may still have any name.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Final, Protocol, Self

import aiohttp
from aiohttp import web

from edge.functions.runtime import INVOKE_ID_HEADER

__all__ = ["DEFAULT_PORT", "FunctionLocator", "FunctionProxy"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 50080
_MAX_BODY: Final = 16 * 1024 * 1024


class FunctionLocator(Protocol):
    """Knows where the runtime of each function app listens."""

    def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
        """The runtime's (host, port), or None if none listens now; LookupError if unknown."""
        ...


_LOCATOR: Final = web.AppKey("locator", FunctionLocator)
_SESSION: Final = web.AppKey("session", aiohttp.ClientSession)


class FunctionProxy:
    """An async context manager serving the proxy on ``host:port`` (0: a free port).

    ``timeout`` is how long a call may take end to end; keep it above the runtimes' own (30 s)
    so that their 504 is the one the caller sees. ``routes`` are the agent's other local routes.
    """

    def __init__(
        self,
        locator: FunctionLocator,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        timeout: float = 35.0,
        routes: Iterable[web.RouteDef] = (),
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}.")
        self._locator = locator
        self._host = host
        self._port = port
        self._timeout = timeout
        self._routes = list(routes)
        self._runner: web.AppRunner | None = None
        self._bound: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once entered)."""
        if self._bound is None:
            raise RuntimeError("The FunctionProxy is not running; enter it first.")
        return self._bound

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app[_LOCATOR] = self._locator
        timeout = aiohttp.ClientTimeout(total=self._timeout)

        async def session(app: web.Application) -> AsyncIterator[None]:
            async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as client:
                app[_SESSION] = client
                yield

        app.cleanup_ctx.append(session)
        app.router.add_routes(self._routes)  # before the function route: matched first
        app.router.add_post("/{app}/{function}", _forward)
        return app

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("This FunctionProxy is already running; enter it only once.")
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound = int(runner.addresses[0][1])
        log.info("function proxy listening on %s:%d", self._host, self._bound)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        self._bound = None
        if runner is not None:
            await runner.cleanup()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def _forward(request: web.Request) -> web.StreamResponse:
    app, function = request.match_info["app"], request.match_info["function"]
    try:
        endpoint = request.app[_LOCATOR].function_endpoint(app, function)
    except LookupError:
        return _error(
            404,
            "UnknownFunction",
            f"This node runs no function {function!r} of an app {app!r}; check both names.",
        )
    if endpoint is None:
        return _error(
            503,
            "FunctionUnavailable",
            f"The runtime of app {app!r} is not listening (starting or restarting); try again.",
        )
    host, port = endpoint
    body = await request.read()
    invoke_id = request.headers.get(INVOKE_ID_HEADER) or uuid.uuid4().hex
    headers = {INVOKE_ID_HEADER: invoke_id}
    # The caller's content type as it is, or none: aiohttp would make a missing one
    # application/octet-stream (raw bytes to the handler), and the runtime tells them apart.
    content_type = request.headers.get("Content-Type")
    if content_type and body:
        headers["Content-Type"] = content_type
    skip = () if "Content-Type" in headers else ("Content-Type",)
    url = f"http://{host}:{port}/{function}"
    try:
        async with request.app[_SESSION].post(
            url, data=body, headers=headers, skip_auto_headers=skip
        ) as answer:
            content = await answer.read()
            return web.Response(
                status=answer.status,
                body=content,
                headers={
                    "Content-Type": answer.headers.get("Content-Type", "application/octet-stream"),
                    INVOKE_ID_HEADER: invoke_id,
                },
            )
    except TimeoutError:
        return _error(
            504,
            "FunctionTimeout",
            f"The function {function!r} of app {app!r} did not answer in time.",
        )
    except aiohttp.ClientError as exc:
        log.warning("function %s of app %s is unreachable: %s", function, app, exc)
        return _error(
            503,
            "FunctionUnavailable",
            f"The runtime of app {app!r} cannot be reached ({type(exc).__name__}); try again.",
        )

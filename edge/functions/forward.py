"""The proxy's HTTP side: the aiohttp application that forwards ``POST /<app>/<function>``.

:class:`edge.functions.FunctionProxy` loads this module (and aiohttp with it) when the first call
arrives, not when the agent starts: an agent with no function app, or whose functions nobody
calls, does not hold aiohttp's ~12 MiB.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Final

import aiohttp
from aiohttp import web

from edge.functions.proxy import FunctionLocator
from edge.functions.runtime import INVOKE_ID_HEADER

__all__ = ["make_app"]

log = logging.getLogger("edge.functions.proxy")

_MAX_BODY: Final = 16 * 1024 * 1024
_LOCATOR: Final = web.AppKey("locator", FunctionLocator)
_SESSION: Final = web.AppKey("session", aiohttp.ClientSession)


def make_app(
    locator: FunctionLocator, timeout: float, routes: Iterable[web.RouteDef] = ()
) -> web.Application:
    """The application: the agent's other ``routes`` first, the function route, and a client
    session for the runtimes closed with it."""
    app = web.Application(client_max_size=_MAX_BODY)
    app[_LOCATOR] = locator
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=client_timeout, auto_decompress=False) as client:
            app[_SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_routes(routes)  # before the function route: matched first
    app.router.add_post("/{app}/{function}", _forward)
    return app


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

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
so an app may still have any name. ``routes`` is a callable made into route definitions when
the server starts, so that building them, too, waits for the first connection.

The port is bound when the proxy is entered (so a port in use fails at start), but the HTTP
server behind it, aiohttp in ``edge.functions.forward``, is loaded when the first connection
waits on the socket: until a program calls a function the agent does not hold aiohttp. That
connection waits in the listen backlog meanwhile and is served like any other.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["DEFAULT_PORT", "FunctionLocator", "FunctionProxy"]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 50080
_BACKLOG: Final = 128


class FunctionLocator(Protocol):
    """Knows where the runtime of each function app listens."""

    def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
        """The runtime's (host, port), or None if none listens now; LookupError if unknown."""
        ...


class FunctionProxy:
    """An async context manager serving the proxy on ``host:port`` (0: a free port).

    ``timeout`` is how long a call may take end to end; keep it above the runtimes' own (30 s)
    so that their 504 is the one the caller sees. ``routes`` makes the agent's other local
    routes (called once, when the server starts).
    """

    def __init__(
        self,
        locator: FunctionLocator,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        timeout: float = 35.0,
        routes: Callable[[], Iterable[web.RouteDef]] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}.")
        self._locator = locator
        self._host = host
        self._port = port
        self._timeout = timeout
        self._routes = routes
        self._socket: socket.socket | None = None
        self._serving: asyncio.Task[web.AppRunner] | None = None
        self._bound: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once entered)."""
        if self._bound is None:
            raise RuntimeError("The FunctionProxy is not running; enter it first.")
        return self._bound

    async def __aenter__(self) -> Self:
        if self._socket is not None:
            raise RuntimeError("This FunctionProxy is already running; enter it only once.")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family, backlog=_BACKLOG)
        sock.setblocking(False)
        self._socket = sock
        self._bound = int(sock.getsockname()[1])
        asyncio.get_running_loop().add_reader(sock.fileno(), self._first_connection)
        log.info("function proxy listening on %s:%d", self._host, self._bound)
        return self

    def _first_connection(self) -> None:
        """A connection waits: start the HTTP server on the socket (once)."""
        assert self._socket is not None
        asyncio.get_running_loop().remove_reader(self._socket.fileno())
        if self._serving is None:
            self._serving = asyncio.create_task(self._serve(self._socket))
            self._serving.add_done_callback(self._served)

    async def _serve(self, sock: socket.socket) -> web.AppRunner:
        from aiohttp import web

        from edge.functions.forward import make_app

        runner = web.AppRunner(
            make_app(self._locator, self._timeout, self._routes() if self._routes else ()),
            access_log=None,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sock, self._socket = self._socket, None
        serving, self._serving = self._serving, None
        self._bound = None
        if sock is None:
            return
        if serving is None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        else:
            try:
                runner = await serving
            except Exception:  # noqa: S110 # logged by _served when it happened
                pass
            else:
                await runner.cleanup()  # stops the server, which closes the socket
        sock.close()

    def _served(self, task: asyncio.Task[web.AppRunner]) -> None:
        """The server could not start: say so, and refuse calls rather than leave them waiting."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the function proxy cannot serve, calls are refused until the agent "
                      "restarts: %s", task.exception())  # fmt: skip
            if self._socket is not None:
                self._socket.close()

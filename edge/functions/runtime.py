"""The Python function runtime: one process serving the handlers of a function service over HTTP.

The native engine starts it for every instance of a ``type: function`` app's service, as
``python -I .../edge/functions/runtime.py`` (it uses the standard library only and imports
nothing of ``edge``, so the handlers' modules cannot be shadowed by the agent's). It is told
what to serve through the environment:

``BAETYL_FUNCTIONS``
    A JSON list of ``{"name", "handler", "code"}``: the function name, ``module.function``, and
    the names of the environment variables holding the directories its modules are in (each is
    put on ``sys.path``; the engine points them at the app's config volumes).
``BAETYL_FUNCTION_HOST`` / ``BAETYL_FUNCTION_PORT``
    Where to listen (``127.0.0.1`` and ``0``, a free port, unless given).
``BAETYL_FUNCTION_PORT_FILE``
    A file the runtime writes the port it listens on to, once it does (removed on exit).
``BAETYL_FUNCTION_TIMEOUT``
    How many seconds a call may take before it is answered 504 (30 unless given).
``BAETYL_APP_NAME``
    The app's name, passed to the handlers in their context.

``POST /<function>`` calls ``handler(event, context)``. The event is the body:

* ``None`` when the body is empty;
* the raw ``bytes`` when the content type is ``application/octet-stream``;
* the parsed JSON value when the content type is JSON (``application/json``, ``*+json``); a body
  that does not parse is answered 400 ``BadRequest``;
* under any other content type, or none (``curl -d`` sends ``application/x-www-form-urlencoded``),
  the parsed JSON value if the body is UTF-8 JSON; otherwise 415 ``UnsupportedMediaType``, saying
  to send JSON, or bytes as ``application/octet-stream``.

So a handler gets JSON values unless the caller asks for bytes by name. The context is a
dict of ``functionName``, ``appName`` and ``invokeId`` (the request's ``X-Baetyl-Invoke-Id``, or
a new one). The result is answered 200 as JSON (``bytes`` are answered as they are). Errors are
JSON ``{"code", "message"}``: 404 ``UnknownFunction``, 400 ``BadRequest``, 415
``UnsupportedMediaType``, 500 ``FunctionError``
(the exception's type and message; the traceback goes to the log only) and 504
``FunctionTimeout``. Each call runs in a thread of its own, so a slow handler never blocks the
server; one that overruns its timeout is left to finish in the background.

A handler that cannot be imported stops the runtime with exit code 1 and a log line saying why,
so the engine reports the app Failed and retries with back-off. The reason is also written next
to the port file (:func:`startup_error_file`), where the engine reads it into the cause it
reports, so ``baetyl node get`` says why.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Final

__all__ = [
    "APP_ENV",
    "FUNCTIONS_ENV",
    "HOST_ENV",
    "INVOKE_ID_HEADER",
    "PORT_ENV",
    "PORT_FILE_ENV",
    "TIMEOUT_ENV",
    "FunctionServer",
    "Handler",
    "RuntimeConfigError",
    "load_handlers",
    "main",
    "runtime_command",
    "startup_error_file",
]

FUNCTIONS_ENV: Final = "BAETYL_FUNCTIONS"
HOST_ENV: Final = "BAETYL_FUNCTION_HOST"
PORT_ENV: Final = "BAETYL_FUNCTION_PORT"
PORT_FILE_ENV: Final = "BAETYL_FUNCTION_PORT_FILE"
TIMEOUT_ENV: Final = "BAETYL_FUNCTION_TIMEOUT"
APP_ENV: Final = "BAETYL_APP_NAME"
INVOKE_ID_HEADER: Final = "X-Baetyl-Invoke-Id"

_DEFAULT_TIMEOUT: Final = 30.0
_MAX_BODY: Final = 16 * 1024 * 1024

log = logging.getLogger("baetyl.function")

Function = Callable[[Any, dict[str, str]], Any]


class RuntimeConfigError(Exception):
    """The runtime's environment or a handler cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Handler:
    """One function the runtime serves: its name, ``module.function`` and the callable."""

    name: str
    target: str
    call: Function


def startup_error_file(port_file: Path) -> Path:
    """Where the runtime whose port file is ``port_file`` writes why it could not start."""
    return port_file.with_name(port_file.name + ".error")


def runtime_command() -> tuple[str, ...]:
    """The command line that starts this runtime with the current interpreter, isolated."""
    return (sys.executable, "-I", str(Path(__file__).resolve()))


def load_handlers(spec: str, environ: Mapping[str, str]) -> dict[str, Handler]:
    """Import the handlers that ``spec`` (the ``BAETYL_FUNCTIONS`` JSON) lists, by name."""
    try:
        entries = json.loads(spec)
    except ValueError as exc:
        raise RuntimeConfigError(f"{FUNCTIONS_ENV} is not valid JSON ({exc}).") from None
    if not isinstance(entries, list) or not entries:
        raise RuntimeConfigError(f"{FUNCTIONS_ENV} must be a non-empty JSON list of handlers.")
    handlers: dict[str, Handler] = {}
    for entry in entries:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("handler"), str)
            and isinstance(entry.get("code", []), list)
        ):
            raise RuntimeConfigError(
                f"Each entry of {FUNCTIONS_ENV} must be {{name, handler, code}}, not {entry!r}."
            )
        for variable in entry.get("code", []):
            directory = environ.get(str(variable))
            if directory is None:
                raise RuntimeConfigError(
                    f"The code directory variable {variable} of function {entry['name']!r} "
                    "is not set."
                )
            if directory not in sys.path:
                sys.path.insert(0, directory)
        handlers[entry["name"]] = Handler(
            entry["name"], entry["handler"], _import(entry["name"], entry["handler"])
        )
    return handlers


def _import(name: str, target: str) -> Function:
    module_name, _, attribute = target.rpartition(".")
    if not module_name:
        raise RuntimeConfigError(
            f"The handler {target!r} of function {name!r} must be module.function."
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RuntimeConfigError(
            f"The module {module_name!r} of function {name!r} cannot be imported "
            f"({type(exc).__name__}: {exc}); check the code config holds {module_name}.py."
        ) from exc
    call = getattr(module, attribute, None)
    if not callable(call):
        raise RuntimeConfigError(
            f"The module {module_name!r} has no function {attribute!r} for function {name!r}; "
            "define it as def " + attribute + "(event, context)."
        )
    return call  # type: ignore[no-any-return]


class _Outcome:
    """What a handler call came to, filled by its worker thread."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class FunctionServer(ThreadingHTTPServer):
    """The HTTP server of the runtime: ``POST /<function>`` calls that handler."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handlers: Mapping[str, Handler],
        *,
        app: str = "",
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.handlers = dict(handlers)
        self.app = app
        self.call_timeout = timeout

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def invoke(self, handler: Handler, event: Any, invoke_id: str) -> tuple[int, bytes, str]:
        """Call ``handler`` in a thread of its own: the status, body and content type."""
        context = {"functionName": handler.name, "appName": self.app, "invokeId": invoke_id}
        outcome = _Outcome()

        def work() -> None:
            try:
                outcome.value = handler.call(event, context)
            except BaseException as exc:  # every failure is the handler's answer
                outcome.error = exc
            finally:
                outcome.done.set()

        threading.Thread(target=work, name=f"call-{handler.name}-{invoke_id}", daemon=True).start()
        if not outcome.done.wait(self.call_timeout):
            log.error(
                "function %s (%s) did not return within %.1f s",
                handler.name, invoke_id, self.call_timeout,
            )  # fmt: skip
            return _error(
                HTTPStatus.GATEWAY_TIMEOUT,
                "FunctionTimeout",
                f"The function {handler.name!r} did not return within {self.call_timeout:g} s.",
            )
        if outcome.error is not None:
            error = outcome.error
            log.error(
                "function %s (%s) raised", handler.name, invoke_id,
                exc_info=(type(error), error, error.__traceback__),
            )  # fmt: skip
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "FunctionError",
                f"The function {handler.name!r} raised {type(error).__name__}: {error}",
            )
        value = outcome.value
        if isinstance(value, bytes | bytearray):
            return HTTPStatus.OK, bytes(value), "application/octet-stream"
        try:
            body = json.dumps(value).encode()
        except (TypeError, ValueError) as exc:
            return _error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "FunctionError",
                f"The function {handler.name!r} returned a {type(value).__name__}, which cannot "
                f"be sent as JSON ({exc}); return a dict, list, string, number or bytes.",
            )
        return HTTPStatus.OK, body, "application/json"


class _RequestHandler(BaseHTTPRequestHandler):
    server: FunctionServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # the name http.server looks for
        name = self.path.split("?", 1)[0].strip("/")
        handler = self.server.handlers.get(name)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(
                *_error(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "BadRequest",
                    f"The request body exceeds {_MAX_BODY} bytes; send less.",
                )
            )
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        if handler is None:
            self._send(
                *_error(
                    HTTPStatus.NOT_FOUND,
                    "UnknownFunction",
                    f"This runtime serves no function {name!r}; "
                    f"it serves {', '.join(sorted(self.server.handlers))}.",
                )
            )
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        event = _event(raw, content_type)
        if isinstance(event, _Refusal):
            self._send(*event.answer)
            return
        invoke_id = self.headers.get(INVOKE_ID_HEADER) or uuid.uuid4().hex
        self._send(*self.server.invoke(handler, event, invoke_id), invoke_id=invoke_id)

    def _send(
        self, status: int, body: bytes, content_type: str, *, invoke_id: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if invoke_id is not None:
            self.send_header(INVOKE_ID_HEADER, invoke_id)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A body the runtime does not hand to the handler, and the error answered instead."""

    answer: tuple[int, bytes, str]


def _event(raw: bytes, content_type: str) -> Any:
    """The handler's event for a body of ``content_type`` (the rule in the module docstring)."""
    if not raw:
        return None
    if content_type == "application/octet-stream":
        return raw
    declared = content_type == "application/json" or content_type.endswith("+json")
    try:
        return json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        if declared:
            return _Refusal(
                _error(
                    HTTPStatus.BAD_REQUEST,
                    "BadRequest",
                    f"The body is not valid JSON ({exc}); fix it, or send it as "
                    "Content-Type: application/octet-stream to get the raw bytes.",
                )
            )
    shown = content_type or "no Content-Type"
    return _Refusal(
        _error(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            f"The body ({shown}) is not JSON; send JSON (Content-Type: application/json), or "
            "raw bytes with Content-Type: application/octet-stream.",
        )
    )


def _error(status: HTTPStatus, code: str, message: str) -> tuple[int, bytes, str]:
    body = json.dumps({"code": code, "message": message}).encode()
    return int(status), body, "application/json"


def _write_port(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` through a rename, so a reader never sees half of it."""
    _write_text(path, f"{port}\n")


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.replace(tmp, path)


def main(environ: Mapping[str, str] | None = None) -> int:
    """Serve the handlers the environment names until SIGTERM or SIGINT; the exit code."""
    env = os.environ if environ is None else environ
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        timeout = float(env.get(TIMEOUT_ENV) or _DEFAULT_TIMEOUT)
        port = int(env.get(PORT_ENV) or 0)
        if timeout <= 0:
            raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds.")
        handlers = load_handlers(env.get(FUNCTIONS_ENV, ""), env)
        server = FunctionServer(
            (env.get(HOST_ENV) or "127.0.0.1", port),
            handlers,
            app=env.get(APP_ENV, ""),
            timeout=timeout,
        )
    except (RuntimeConfigError, ValueError, OSError) as exc:
        log.error("the function runtime cannot start: %s", exc)
        if env.get(PORT_FILE_ENV):
            try:
                _write_text(startup_error_file(Path(env[PORT_FILE_ENV])), str(exc))
            except OSError as error:
                log.error("cannot write why to %s: %s", env[PORT_FILE_ENV], error)
        return 1
    port_file = Path(env[PORT_FILE_ENV]) if env.get(PORT_FILE_ENV) else None
    if port_file is not None:
        startup_error_file(port_file).unlink(missing_ok=True)

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if port_file is not None:
            _write_port(port_file, server.port)
        log.info(
            "serving %s on %s:%d",
            ", ".join(f"{h.name} ({h.target})" for h in handlers.values()),
            server.server_address[0], server.port,
        )  # fmt: skip
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.server_close()
        if port_file is not None:
            port_file.unlink(missing_ok=True)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Function apps: the Python runtime as a real process, the native engine running it, the proxy.

The runtime is started the way the engine starts it (``python -I runtime.py`` with its
environment); the engine and proxy tests run a real ``type: function`` app; the last test goes
through the real cloud and a real ``baetyl edge run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.engines import AppSpec, InstanceState
from edge.engines.native import NativeEngine
from edge.functions import (
    FUNCTIONS_ENV,
    INVOKE_ID_HEADER,
    PORT_FILE_ENV,
    TIMEOUT_ENV,
    FunctionProxy,
    runtime_command,
)
from tests.support.agent import activate_node, stop_left_apps
from tests.support.cloud import Api, RunningCloud
from tests.support.polling import until
from tests.support.up import BAETYL

HANDLERS = """\
import time


def echo(event, context):
    return {"event": event if not isinstance(event, bytes) else event.decode(), **context}


def fail(event, context):
    raise ValueError("bad input")


def slow(event, context):
    time.sleep(float(event or 5))
    return "late"


def raw(event, context):
    return b"\\x00\\x01"


def odd(event, context):
    return {1, 2}
"""

HELLO = 'def handler(event, context):\n    return {"hello": event["name"]}\n'

FAST: dict[str, Any] = {"stop_timeout": 2.0, "backoff": (0.1, 1.0), "poll_interval": 0.05}


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM ``proc``, SIGKILL it if it does not exit, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


async def post(
    session: aiohttp.ClientSession, url: str, body: Any = None, *, data: bytes | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    """POST JSON ``body`` (or raw ``data``) to ``url``: status, decoded answer and headers."""
    kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": body}
    async with session.post(url, **kwargs) as response:
        content = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(content), response.headers
        return response.status, content, response.headers


def functions(*pairs: tuple[str, str]) -> str:
    """The ``BAETYL_FUNCTIONS`` value serving ``(name, module.function)`` from $CODE."""
    return json.dumps([{"name": n, "handler": h, "code": ["CODE"]} for n, h in pairs])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client."""
    async with aiohttp.ClientSession() as client:
        yield client


@dataclass(frozen=True, slots=True)
class Runtime:
    """A runtime process, its base URL and its log."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[Callable[[str], Awaitable[Runtime]]]:
    """Start the runtime serving the given handlers (0.5 s timeout); all stopped after."""
    started: list[subprocess.Popen[bytes]] = []
    code = tmp_path / "code"
    code.mkdir()
    (code / "fns.py").write_text(HANDLERS)

    async def start(spec: str) -> Runtime:
        port_file = tmp_path / f"run/{len(started)}.port"
        log = tmp_path / f"runtime-{len(started)}.log"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "CODE": str(code),
            FUNCTIONS_ENV: spec,
            PORT_FILE_ENV: str(port_file),
            TIMEOUT_ENV: "0.5",
            "BAETYL_APP_NAME": "app",
        }
        with log.open("wb") as out:
            # Popen returns at once; the test then waits for the port file, not the process.
            proc = subprocess.Popen(runtime_command(), env=env, stdout=out, stderr=out)  # noqa: ASYNC220
        started.append(proc)
        await until(lambda: port_file.exists() or proc.poll() is not None)
        port = int(port_file.read_text()) if port_file.exists() else 0
        return Runtime(proc, f"http://127.0.0.1:{port}", log)

    yield start
    for proc in started:
        stop_process(proc)


async def test_runtime_answers_results_errors_and_timeouts(
    start_runtime: Callable[[str], Awaitable[Runtime]], session: aiohttp.ClientSession
) -> None:
    """Results are 200 JSON, exceptions 500 without traceback, overruns 504, unknown 404."""
    spec = functions(
        ("echo", "fns.echo"), ("fail", "fns.fail"), ("slow", "fns.slow"),
        ("raw", "fns.raw"), ("odd", "fns.odd"),
    )  # fmt: skip
    runtime = await start_runtime(spec)
    url = runtime.url

    status, body, headers = await post(session, f"{url}/echo", {"name": "x"})
    assert status == 200
    assert body["event"] == {"name": "x"}
    assert body["functionName"] == "echo"
    assert body["appName"] == "app"
    assert body["invokeId"] == headers[INVOKE_ID_HEADER]

    assert (await post(session, f"{url}/echo", data=b"plain"))[1]["event"] == "plain"
    assert (await post(session, f"{url}/raw"))[1] == b"\x00\x01"

    status, body, _ = await post(session, f"{url}/fail", {})
    assert (status, body["code"]) == (500, "FunctionError")
    assert body["message"] == "The function 'fail' raised ValueError: bad input"
    assert "Traceback" not in json.dumps(body)

    status, body, _ = await post(session, f"{url}/odd")
    assert (status, body["code"]) == (500, "FunctionError")

    # A slow call times out while other calls are answered meanwhile.
    slow = asyncio.create_task(post(session, f"{url}/slow", 2))
    await asyncio.sleep(0.1)
    assert (await post(session, f"{url}/echo", 1))[0] == 200
    status, body, _ = await slow
    assert (status, body["code"]) == (504, "FunctionTimeout")

    status, body, _ = await post(session, f"{url}/nope")
    assert (status, body["code"]) == (404, "UnknownFunction")
    async with session.post(
        f"{url}/echo", data=b"{", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400

    stop_process(runtime.proc)
    assert runtime.proc.returncode == 0
    output = runtime.log.read_text()
    assert "Traceback" in output  # the traceback is in the log, not in the answer
    assert "ValueError: bad input" in output


async def test_runtime_exits_when_a_handler_cannot_be_imported(
    start_runtime: Callable[[str], Awaitable[Runtime]],
) -> None:
    """A missing module stops the runtime with code 1 and a log line naming it."""
    runtime = await start_runtime(functions(("f", "missing.handler")))
    assert await asyncio.to_thread(runtime.proc.wait, 10) == 1
    output = runtime.log.read_text()
    assert "The module 'missing' of function 'f' cannot be imported" in output


def function_app(
    handlers: list[dict[str, str]], code: Mapping[str, str], *, name: str = "fn"
) -> AppSpec:
    """A function app whose handlers take their code from the config ``code``."""
    spec = {
        "type": "function",
        "services": [{"name": "runtime", "runtime": "python3", "handlers": handlers}],
        "volumes": [{"name": "src", "config": {"name": "code"}}],
    }
    return AppSpec(name, "1", spec, {"code": dict(code)})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[NativeEngine]:
    """A native engine under a temporary root; every app stopped after."""
    async with NativeEngine(tmp_path / "native", **FAST) as running:
        try:
            yield running
        finally:
            await running.stop_all()


async def test_engine_runs_a_function_app_behind_the_proxy(
    engine: NativeEngine, session: aiohttp.ClientSession
) -> None:
    """POST /<app>/<function> reaches the handler; unknown apps and functions are 404."""
    hello = {"name": "hello", "handler": "hello.handler", "codeConfig": "code"}
    await engine.apply([function_app([hello], {"hello.py": HELLO})])
    async with FunctionProxy(engine, port=0) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        await until(lambda: engine.function_endpoint("fn", "hello"))
        (status,) = engine.status()
        assert status.state is InstanceState.RUNNING

        code, body, _ = await post(session, f"{base}/fn/hello", {"name": "edge"})
        assert (code, body) == (200, {"hello": "edge"})

        for path in ("/fn/nope", "/other/hello"):
            code, body, _ = await post(session, base + path, {})
            assert (code, body["code"]) == (404, "UnknownFunction")


async def test_proxy_times_out_and_reports_unreachable_runtimes(
    engine: NativeEngine, session: aiohttp.ClientSession
) -> None:
    """A call longer than the proxy's timeout is 504; a runtime that is gone is 503."""
    slow = {"name": "slow", "handler": "fns.slow"}  # no codeConfig: every config volume
    await engine.apply([function_app([slow], {"fns.py": HANDLERS})])
    async with FunctionProxy(engine, port=0, timeout=0.5) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        await until(lambda: engine.function_endpoint("fn", "slow"))
        code, body, _ = await post(session, f"{base}/fn/slow", 3)
        assert (code, body["code"]) == (504, "FunctionTimeout")

    class Gone:
        """A locator pointing at a closed port, or at no runtime at all."""

        def __init__(self, endpoint: tuple[str, int] | None) -> None:
            self.endpoint = endpoint

        def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
            return self.endpoint

    async with FunctionProxy(Gone(None), port=0) as proxy:
        code, body, _ = await post(session, f"http://127.0.0.1:{proxy.port}/a/f", {})
        assert (code, body["code"]) == (503, "FunctionUnavailable")
    closed = proxy_port_closed()
    async with FunctionProxy(Gone(("127.0.0.1", closed)), port=0) as proxy:
        code, body, _ = await post(session, f"http://127.0.0.1:{proxy.port}/a/f", {})
        assert (code, body["code"]) == (503, "FunctionUnavailable")


class NoFunctions:
    """A locator that knows no function."""

    def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
        raise LookupError(app)


async def test_proxy_holds_its_port_from_entry_to_exit_and_serves_waiting_calls(
    session: aiohttp.ClientSession,
) -> None:
    """The port is taken on entry (a second proxy on it fails at once), the first calls,
    made together before the HTTP server is loaded, are all answered, and exit frees the port,
    whether a call came or not."""
    async with FunctionProxy(NoFunctions(), port=0) as proxy:
        port = proxy.port
        with pytest.raises(OSError, match="in use"):
            async with FunctionProxy(NoFunctions(), port=port):
                pass
        calls = [post(session, f"http://127.0.0.1:{port}/a/f{i}", {}) for i in range(5)]
        answers = await asyncio.gather(*calls)
        assert [(code, body["code"]) for code, body, _ in answers] == [(404, "UnknownFunction")] * 5
    for _ in range(2):  # once after serving, once never called
        async with FunctionProxy(NoFunctions(), port=port) as again:
            assert again.port == port


def proxy_port_closed() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_function_app_without_its_code_config_fails(engine: NativeEngine) -> None:
    """A codeConfig that no volume holds makes the app Failed with a cause saying what to add."""
    handler = {"name": "h", "handler": "hello.handler", "codeConfig": "elsewhere"}
    await engine.apply([function_app([handler], {"hello.py": HELLO})])
    (status,) = engine.status()
    assert status.state is InstanceState.FAILED
    assert status.cause is not None
    assert "the config 'elsewhere', which no volume of the app holds" in status.cause
    with pytest.raises(LookupError):
        engine.function_endpoint("fn", "h")


@contextlib.asynccontextmanager
async def agent_with_proxy(state_dir: Path) -> AsyncIterator[str]:
    """`baetyl edge run` on the node activated in ``state_dir``, its proxy on a free port: the
    proxy's URL. The agent and the apps it left running are stopped after."""
    proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; its output is read in a thread
        [BAETYL, "edge", "run", "--state-dir", str(state_dir), "--report-interval", "1",
         "--functions-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.startswith("function proxy on 127.0.0.1:"), line
        yield "http://" + line.rsplit(" ", 1)[1].strip()
    finally:
        await asyncio.to_thread(stop_process, proc)
        await stop_left_apps(state_dir)


@pytest.fixture
async def agent_proxy(agent_dir: Path) -> AsyncIterator[str]:
    """`baetyl edge run` on the activated node gw-1 (site=x): its proxy's URL."""
    async with agent_with_proxy(agent_dir) as url:
        yield url


async def test_function_called_through_the_agents_proxy_end_to_end(
    cloud: RunningCloud, api: Api, agent_proxy: str, session: aiohttp.ClientSession
) -> None:
    """A config holding hello.py and a function app mounting it answer POST /<app>/<function>."""
    config = {"name": "hello-code", "data": {"hello.py": HELLO}}
    assert (await api.call("POST", "/configs", config))[0] == 201
    app = {
        "name": "greeter",
        "type": "function",
        "selector": "site=x",
        "services": [
            {
                "name": "python",
                "runtime": "python3",
                "handlers": [
                    {"name": "hello", "handler": "hello.handler", "codeConfig": "hello-code"}
                ],
            }
        ],
        "volumes": [{"name": "code", "config": {"name": "hello-code"}}],
    }
    assert (await api.call("POST", "/apps", app))[0] == 201

    async def answered() -> Any:
        code, body, _ = await post(session, f"{agent_proxy}/greeter/hello", {"name": "node"})
        return body if code == 200 else None

    assert await until(answered, what="the function to answer") == {"hello": "node"}

    async def reported_running() -> bool:
        stats = (await api.call("GET", "/nodes/gw-1/stats"))[1]
        entries = [s for s in stats["appstats"] if s["name"] == "greeter"]
        return bool(entries and entries[0]["status"] == "Running")

    await until(reported_running, what="the API to show the function app Running")


async def test_the_body_rule_json_unless_bytes_are_asked_for(
    start_runtime: Callable[[str], Awaitable[Runtime]], session: aiohttp.ClientSession
) -> None:
    """JSON parses under any content type but octet-stream; a body that is not JSON is 415
    unless it is sent as bytes (octet-stream) or claims JSON (400)."""
    runtime = await start_runtime(functions(("echo", "fns.echo")))

    async def call(data: bytes, content_type: str | None) -> tuple[int, Any]:
        headers = {} if content_type is None else {"Content-Type": content_type}
        async with session.post(
            f"{runtime.url}/echo", data=data, headers=headers, skip_auto_headers=["Content-Type"]
        ) as response:
            return response.status, await response.json()

    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        status, body = await call(b'{"name": "x"}', content_type)
        assert (status, body["event"]) == (200, {"name": "x"}), content_type
        status, body = await call(b"name=x", content_type)
        assert (status, body["code"]) == (415, "UnsupportedMediaType"), content_type
        shown = content_type or "no Content-Type"
        assert body["message"] == (
            f"The body ({shown}) is not JSON; send JSON (Content-Type: application/json), or raw "
            "bytes with Content-Type: application/octet-stream."
        )
    status, body = await call(b'{"name": "x"}', "application/octet-stream")
    assert (status, body["event"]) == (200, '{"name": "x"}')  # bytes: echo decoded them
    status, body = await call(b"\xff\xfe", "application/x-www-form-urlencoded")
    assert (status, body["code"]) == (415, "UnsupportedMediaType")  # not UTF-8: not JSON
    status, body = await call(b"name=x", "application/json; charset=utf-8")
    assert (status, body["code"]) == (400, "BadRequest")
    status, body = await call(b"", None)
    assert (status, body["event"]) == (200, None)


README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True, slots=True)
class FunctionExample:
    """The README's function app example: the file it writes and applies, and each call with
    the answer the README shows."""

    file_name: str
    file_text: str
    apply: list[str]
    calls: list[tuple[list[str], Any]]


def readme_function_example() -> FunctionExample:
    """The ``function-app`` block of README.md, read as a user pastes it."""
    text = README.read_text()
    block = text.split("<!-- example: function-app", 1)[1].split("```sh\n", 1)[1]
    block = block.split("\n```\n", 1)[0]
    head, rest = block.split("<<'YAML'\n", 1)
    file_name = head.rsplit("cat > ", 1)[1].strip()
    file_text, commands = rest.split("\nYAML\n", 1)
    lines = [line for line in commands.splitlines() if line.strip()]
    apply = next(shlex.split(line) for line in lines if line.startswith("baetyl apply"))
    calls = [
        (shlex.split(line), json.loads(lines[i + 1].removeprefix("#")))
        for i, line in enumerate(lines)
        if line.startswith("curl ")
    ]
    return FunctionExample(file_name, file_text + "\n", apply, calls)


async def test_a_runtime_that_cannot_start_says_why_in_the_apps_cause(engine: NativeEngine) -> None:
    """A handler whose module is not in the code config: the app is Failed, and its cause is the
    runtime's own reason, not only its exit code."""
    handler = {"name": "f", "handler": "absent.f", "codeConfig": "code"}
    await engine.apply([function_app([handler], {"hello.py": HELLO})])

    def failed_with_a_reason() -> str | None:
        (status,) = engine.status()
        cause = status.cause or ""
        return cause if status.state is InstanceState.FAILED and ": " in cause else None

    cause = await until(failed_with_a_reason)
    assert cause == (
        "exited with code 1: The module 'absent' of function 'f' cannot be imported "
        "(ModuleNotFoundError: No module named 'absent'); check the code config holds absent.py."
    )


@pytest.fixture
async def paris_proxy(cloud: RunningCloud, api: Api, tmp_path: Path) -> AsyncIterator[str]:
    """The README's node: gw-1 labelled site=paris, activated, its agent running: proxy URL."""
    state = tmp_path / "edge"
    await activate_node(api, "gw-1", {"site": "paris"}, state)
    async with agent_with_proxy(state) as url:
        yield url


async def run_command(argv: list[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` without blocking the loop (the cloud answers from it): exit code, stdout."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=None if env is None else {**os.environ, **env},
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_the_readme_function_example_runs_as_written(
    api: Api, cloud: RunningCloud, paris_proxy: str, tmp_path: Path
) -> None:
    """The README's config and app applied with `baetyl apply`, then its curl calls (with and
    without Content-Type) answered exactly as the README shows, through a real agent."""
    example = readme_function_example()
    assert example.apply == ["baetyl", "apply", "-f", example.file_name]
    assert len(example.calls) == 3
    (tmp_path / example.file_name).write_text(example.file_text)
    env = {"BAETYL_API_URL": cloud.api_url, "BAETYL_API_TOKEN": api.token}
    code, out = await run_command(
        [BAETYL, *example.apply[1:-1], str(tmp_path / example.file_name)], env
    )
    assert code == 0, out
    assert "config/greeter-code created" in out
    assert "app/greeter created" in out

    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed; apt-get install curl"
    proxy = paris_proxy.removeprefix("http://")

    async def answer(argv: list[str]) -> Any:
        argv = [curl, *(arg.replace("localhost:50080", proxy) for arg in argv[1:])]
        code, out = await run_command(argv)
        assert code == 0, out
        return json.loads(out)

    first_call, first_answer = example.calls[0]

    async def served() -> bool:
        return bool(await answer(first_call) == first_answer)

    await until(served, what="the node to serve the README's function")
    for argv, expected in example.calls:
        assert await answer(argv) == expected, argv

    # `baetyl node get` shows each app's status as the node reported it, and why one fails: a
    # function whose module is not in its (mounted) code config stops its runtime at import.
    broken = {"name": "broken", "type": "function", "selector": "site=paris",
              "services": [{"name": "python", "handlers": [
                  {"name": "f", "handler": "absent.f", "codeConfig": "greeter-code"}]}],
              "volumes": [{"name": "code", "config": {"name": "greeter-code"}}]}  # fmt: skip
    assert (await api.call("POST", "/apps", broken))[0] == 201

    async def node_get() -> dict[str, list[str]]:
        code, out = await run_command([BAETYL, "node", "get", "gw-1"], env)
        assert code == 0, out
        sections = [part for part in out.split("\n\n") if part.startswith("APP ")]
        rows = [line.split(None, 3) for line in "".join(sections).splitlines()]
        return {row[0]: row[1:] for row in rows[1:]}

    async def both_reported() -> dict[str, list[str]] | None:
        rows = await node_get()
        return rows if rows.get("broken", [""] * 2)[1] == "Failed" else None

    rows = await until(both_reported, what="baetyl node get to show the failed app")
    assert rows["greeter"] == ["1", "Running", "<none>"]
    assert rows["broken"][:2] == ["1", "Failed"]
    assert rows["broken"][2].startswith(
        "exited with code 1: The module 'absent' of function 'f' cannot be imported"
    ), rows

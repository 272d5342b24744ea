"""The ``baetyl`` command as a user runs it: help, errors, and ``baetyl up`` serving clients."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from management.config import Settings, load_settings
from tests.support.tools import require_tool
from tests.support.up import BAETYL, EPHEMERAL, start_up


def baetyl(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BAETYL, *argv], cwd=cwd, capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), ["up", "broker", "certs", "edge", "config", "tokens"]),
        (("certs",), ["init", "issue", "renew", "revoke", "list", "crl"]),
        (("certs", "issue"), ["node", "device", "operator", "service", "server"]),
        (("device",), ["list", "get", "create", "apply", "delete", "password"]),
        (("route",), ["list", "get", "create", "apply", "delete"]),
        (("broker",), ["run"]),
        (("edge",), ["keygen"]),
        (("config",), ["show"]),
        (("tokens",), ["create", "list", "revoke"]),
    ],
)
def test_help_on_every_level(tmp_path: Path, argv: tuple[str, ...], expected: list[str]) -> None:
    """--help on each level lists its subcommands and exits 0."""
    result = baetyl(*argv, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert re.search(rf"^\s+{word}\s", result.stdout, re.MULTILINE), (word, result.stdout)


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    """A user mistake prints one 'error:' line naming the fix and exits 1."""
    result = baetyl("certs", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "baetyl certs init" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_config_key_is_one_line(tmp_path: Path) -> None:
    """An unknown key in BAETYL_* is refused by name before any command runs."""
    env = dict(os.environ, BAETYL_BROKER__PROT="1")
    result = baetyl("config", "show", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "broker.prot" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_reflects_layers(tmp_path: Path) -> None:
    """config show prints the effective tree: the file, then the environment, then --set."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "baetyl.toml").write_text("[broker]\nport = 1111\nws_port = 2222\n")
    env = dict(os.environ, BAETYL_BROKER__WS_PORT="3333")
    result = baetyl(
        "--data-dir",
        "data",
        "--set",
        "broker.plain_port=4444",
        "config",
        "show",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert '"port": 1111' in result.stdout
    assert '"ws_port": 3333' in result.stdout
    assert '"plain_port": 4444' in result.stdout


def test_global_options_follow_the_command_too(tmp_path: Path) -> None:
    """--data-dir, --config, --set and --log-level work after the command; --set adds up."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "baetyl.toml").write_text("[broker]\nport = 1111\n")
    (tmp_path / "other.toml").write_text("[broker]\nport = 2222\n")
    result = baetyl(
        "--set", "broker.ws_port=3333", "config", "show", "--data-dir", "data",
        "--set", "broker.plain_port=4444", "--log-level", "debug", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["data_dir"] == "data"
    assert shown["log_level"] == "debug"
    assert (shown["broker"]["port"], shown["broker"]["ws_port"]) == (1111, 3333)
    assert shown["broker"]["plain_port"] == 4444
    after = baetyl("config", "show", "--config", "other.toml", cwd=tmp_path)
    assert json.loads(after.stdout)["broker"]["port"] == 2222


def test_up_takes_its_settings_after_the_command(tmp_path: Path) -> None:
    """'baetyl up --set KEY=VALUE' reaches the configuration: a bad value is refused by name."""
    result = baetyl("up", "--set", "broker.port=eighty", cwd=tmp_path)
    assert result.returncode == 1
    assert "broker.port" in result.stderr
    assert "unrecognized arguments" not in result.stderr
    helped = baetyl("up", "--help", cwd=tmp_path)
    assert "global options" in helped.stdout
    assert "--set KEY=VALUE" in helped.stdout


def test_commands_offer_only_the_global_options_they_use(tmp_path: Path) -> None:
    """API and edge commands read no cloud configuration, so they take --log-level only."""
    for argv in (("node", "list"), ("edge", "run")):
        helped = baetyl(*argv, "--help", cwd=tmp_path)
        assert "--log-level" in helped.stdout
        assert "--set" not in helped.stdout
        assert "--data-dir" not in helped.stdout


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    """'baetyl --version' prints the distribution's version and exits 0, without a command."""
    result = baetyl("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"baetyl {metadata.version('pybaetyl')}\n"


def test_help_says_what_edge_does(tmp_path: Path) -> None:
    """The root help describes the edge group by what it does today, the agent included."""
    text = " ".join(baetyl("--help", cwd=tmp_path).stdout.split())  # lines wrapped as they fit
    assert "(later)" not in text
    assert re.search(r" edge the node side: [^.]*, and the agent that runs its apps", text), text


def test_config_show_defaults_as_toml_starts_a_config_file(tmp_path: Path) -> None:
    """`config show --defaults --format toml` ignores the environment and writes a baetyl.toml
    that loads back to the defaults; a key edited in it then takes effect."""
    env = dict(os.environ, BAETYL_BROKER__PORT="1111")
    result = baetyl("config", "show", "--defaults", "--format", "toml", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "port = 8883" in result.stdout
    data = tmp_path / "baetyl-data"
    data.mkdir()
    (data / "baetyl.toml").write_text(result.stdout)
    assert load_settings(data_dir=data, environ={}) == Settings(data_dir=data)

    edited = result.stdout.replace("node_cert_days = 365", "node_cert_days = 30")
    (data / "baetyl.toml").write_text(edited)
    shown = baetyl("config", "show", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["pki"]["node_cert_days"] == 30


@pytest.fixture
def running_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``baetyl up`` on port 0 in a fresh directory, stopped with SIGTERM afterwards."""
    proc, port = start_up(tmp_path)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)


def test_up_serves_nodes_and_operators_on_embedded_defaults(
    tmp_path: Path, running_up: tuple[subprocess.Popen[str], int]
) -> None:
    """From an empty directory, `baetyl up` creates the CA and serves a node that the README's
    operator command can watch; SIGTERM then stops it cleanly."""
    pub, sub = require_tool("mosquitto_pub"), require_tool("mosquitto_sub")
    proc, port = running_up
    data = tmp_path / "baetyl-data"
    assert (data / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    assert (data / "server" / "server.key").stat().st_mode & 0o077 == 0

    assert baetyl("edge", "keygen", "--state-dir", "n1", cwd=tmp_path).returncode == 0
    issued = baetyl(
        "certs", "issue", "node", "--namespace", "default", "--name", "n1",
        "--csr", "n1/node.csr", "--out", "n1/node.crt", cwd=tmp_path,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    op = baetyl("certs", "issue", "operator", "--name", "dbg", "--out-dir", "op", cwd=tmp_path)
    assert op.returncode == 0, op.stderr

    tls = ["-h", "localhost", "-p", str(port), "--cafile", "op/ca.crt"]
    watcher = subprocess.Popen(
        [sub, *tls, "--cert", "op/dbg.crt", "--key", "op/dbg.key", "-i", "operator:dbg",
         "-t", "$baetyl/#", "-v", "-C", "1", "-W", "10"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # let the subscription land before the node publishes
        sent = subprocess.run(
            [pub, *tls, "--cert", "n1/node.crt", "--key", "n1/node.key", "-i", "default.n1",
             "-t", "$baetyl/node/default.n1/report", "-q", "1", "-m", '{"ok":true}'],
            cwd=tmp_path, capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        out, err = watcher.communicate(timeout=15)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert out.strip() == '$baetyl/node/default.n1/report {"ok":true}', err

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_up_restarts_on_the_same_data_directory(tmp_path: Path) -> None:
    """A second `baetyl up` on the same directory reuses the CA: no refusal, no new CA."""
    first = baetyl("certs", "init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ca_before = (tmp_path / "baetyl-data" / "ca" / "ca.crt").read_bytes()
    proc = subprocess.Popen(
        [BAETYL, *EPHEMERAL, "up"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "pybaetyl is up" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert (tmp_path / "baetyl-data" / "ca" / "ca.crt").read_bytes() == ca_before


def test_a_second_up_on_the_same_data_directory_is_refused(
    tmp_path: Path, running_up: tuple[subprocess.Popen[str], int]
) -> None:
    """A second `baetyl up` on a data directory in use exits 1 naming the first's pid, before
    it opens a broker of its own; once the first is SIGKILLed the directory serves again."""
    first, _port = running_up
    second = baetyl(*EPHEMERAL, "up", cwd=tmp_path)
    assert second.returncode == 1, second.stdout
    assert second.stderr.startswith("error: "), second.stderr
    assert f"(pid {first.pid})" in second.stderr
    assert "--data-dir" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert "pybaetyl is up" not in second.stdout
    assert first.poll() is None

    first.kill()  # no clean stop: the lock goes with the process
    first.communicate(timeout=15)
    third, _third_port = start_up(tmp_path)
    third.send_signal(signal.SIGTERM)
    third.communicate(timeout=15)
    assert third.returncode == 0


@pytest.mark.parametrize("taken", ["broker.port", "api.port", "api.activation_port"])
def test_a_port_in_use_is_one_line_without_traceback(
    tmp_path: Path, running_up: tuple[subprocess.Popen[str], int], taken: str
) -> None:
    """`baetyl up` on a port already in use prints one line naming the key to change, not
    amqtt's or aiohttp's traceback."""
    _first, mqtt_port = running_up
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = mqtt_port if taken == "broker.port" else holder.getsockname()[1]
        other = tmp_path / "other"
        other.mkdir()
        result = baetyl(*EPHEMERAL, "--set", f"{taken}={port}", "up", cwd=other)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not re.match(r"\d{4}-", line)]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ")
    assert "in use" in errors[0]
    assert f"--set {taken}=" in errors[0]


@pytest.mark.parametrize(
    "argv",
    [
        ("certs", "list"),
        ("certs", "issue", "node", "--namespace", "default", "--name", "n1", "--csr",
         "n1/node.csr"),
    ],
)  # fmt: skip
def test_a_reader_that_leaves_ends_the_command_quietly(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """`baetyl certs ... | head -1`: once stdout's reader has gone the command exits 141, as a
    program killed by SIGPIPE, with no BrokenPipeError traceback."""
    assert baetyl("certs", "init", cwd=tmp_path).returncode == 0
    assert baetyl("edge", "keygen", "--state-dir", "n1", cwd=tmp_path).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        result = subprocess.run(
            [BAETYL, *argv], cwd=tmp_path, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""

"""The client commands (``baetyl node|app|... list|get|create|apply|delete``, ``baetyl apply``).

They run against the real cloud in the test's event loop; the command itself is synchronous, so
it runs in a thread (``asyncio.to_thread``) while the loop serves its requests.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from management.cli.client import DEFAULT_URL, ClientError, resolve_endpoint
from management.cli.resources import KINDS, render_table
from management.store import Kind
from tests.management.api_samples import key_and_certificate, sample
from tests.support.cli import Cli, capture
from tests.support.cloud import RunningCloud
from tests.support.db import Database


@pytest.fixture
def database(tmp_path: Path) -> Database:
    """SQLite only: the client does not depend on the store's backend, which has its own tests."""
    path = tmp_path / "baetyl.db"
    return Database("sqlite", f"sqlite://{path}", path=path)


@pytest.fixture
def no_client_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No address, token or client configuration from the machine running the tests."""
    for name in ("BAETYL_API_URL", "BAETYL_API_TOKEN", "BAETYL_CLIENT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], no_client_config: None) -> Cli:
    """Run ``baetyl ARGV...`` in a thread and capture what it printed."""
    return capture(capsys)


@pytest.fixture
async def token(cloud: RunningCloud, monkeypatch: pytest.MonkeyPatch, run: Cli) -> str:
    """A token for namespace ``default``, given to the commands by BAETYL_API_URL/TOKEN."""
    token = await cloud.token("default")
    monkeypatch.setenv("BAETYL_API_URL", cloud.api_url)
    monkeypatch.setenv("BAETYL_API_TOKEN", token)
    return token


def write(path: Path, documents: list[dict[str, Any]]) -> str:
    """``documents`` as a multi-document YAML file at ``path``; its name."""
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


def table(text: str) -> list[list[str]]:
    """A printed table split into rows of cells (cells never hold spaces)."""
    return [line.split() for line in text.splitlines()]


async def test_node_create_list_get_delete(run: Cli, token: str, tmp_path: Path) -> None:
    """A node goes through create, list (table), get (json) and delete, then is not found."""
    file = write(tmp_path / "node.yaml", [sample("nodes", "edge-01")])

    created = await run("node", "create", "-f", file)
    assert (created.code, created.out) == (0, "node/edge-01 created\n")

    listed = await run("node", "list")
    assert listed.code == 0, listed.err
    header, row = table(listed.out)
    assert header == ["NAME", "ONLINE", "APPS", "LABELS", "VERSION", "AGE"]
    assert row[:4] == ["edge-01", "no", "<none>", "site=paris"]

    got = await run("node", "get", "edge-01", "-o", "json")
    assert got.code == 0
    assert got.json()["properties"] == {"interval": 5}
    assert got.json()["online"] is False

    deleted = await run("node", "delete", "edge-01")
    assert (deleted.code, deleted.out) == (0, "node/edge-01 deleted\n")

    missing = await run("node", "get", "edge-01")
    assert missing.code == 1
    assert missing.err.startswith("error: There is no node named 'edge-01'")
    assert "(requestId " in missing.err
    assert token not in missing.out + missing.err


async def test_apply_creates_then_leaves_alone_then_updates(
    run: Cli, token: str, tmp_path: Path
) -> None:
    """apply creates, reports an identical second apply unchanged, and updates a changed object."""
    body = sample("configs", "app-conf", labels={"team": "ot"})
    file = write(tmp_path / "conf.yaml", [body])

    assert (await run("config", "apply", "-f", file)).out == "config/app-conf created\n"
    first = (await run("config", "get", "app-conf", "-o", "json")).json()

    again = await run("config", "apply", "-f", file)
    assert (again.code, again.out) == (0, "config/app-conf unchanged\n")
    assert (await run("config", "get", "app-conf", "-o", "json")).json()["version"] == first[
        "version"
    ]

    body["data"] = {"app.yaml": "level: debug\nformat: json\n"}
    write(tmp_path / "conf.yaml", [body])
    changed = await run("config", "apply", "-f", file)
    assert (changed.code, changed.out) == (0, "config/app-conf configured\n")

    shown = await run("config", "get", "app-conf", "-o", "yaml")
    assert "app.yaml: |\n" in shown.out  # multi-line values as literal blocks
    now = yaml.safe_load(shown.out)
    assert now["data"] == body["data"]
    assert now["version"] != first["version"]


async def test_yaml_output_applies_again_unchanged(run: Cli, token: str, tmp_path: Path) -> None:
    """The -o yaml of a get or a list can be applied as is: server-set fields are dropped."""
    file = write(
        tmp_path / "objects.yaml", [sample("nodes", "edge-01"), sample("nodes", "edge-02")]
    )
    assert (await run("node", "apply", "-f", file)).code == 0

    single = tmp_path / "one.yaml"
    single.write_text((await run("node", "get", "edge-01", "-o", "yaml")).out)
    assert (await run("node", "apply", "-f", str(single))).out == "node/edge-01 unchanged\n"

    listing = tmp_path / "all.json"
    listing.write_text((await run("node", "list", "-o", "json")).out)
    result = await run("node", "apply", "-f", str(listing))
    assert result.out == "node/edge-01 unchanged\nnode/edge-02 unchanged\n"


async def test_apply_file_of_several_kinds(run: Cli, token: str, tmp_path: Path) -> None:
    """baetyl apply takes each object's kind, and creates configs and secrets before the app."""
    app = sample("apps", "bridge", kind="App")
    app["services"][0]["volumeMounts"] = [{"name": "conf", "mountPath": "/etc/bridge"}]
    app["volumes"] = [
        {"name": "conf", "config": {"name": "bridge-conf"}},
        {"name": "creds", "secret": {"name": "bridge-creds"}},
    ]
    file = write(
        tmp_path / "stack.yaml",
        [
            app,
            sample("configs", "bridge-conf", kind="Config"),
            sample("secrets", "bridge-creds", kind="secret"),
            sample("registries", "company", kind="Registry"),
            sample("nodes", "edge-01", kind="Node"),
        ],
    )

    applied = await run("apply", "-f", file)
    assert applied.code == 0, applied.err
    assert applied.out.splitlines() == [
        "config/bridge-conf created",
        "secret/bridge-creds created",
        "registry/company created",
        "node/edge-01 created",
        "app/bridge created",
    ]

    apps = await run("app", "list")
    assert table(apps.out)[0] == [
        "NAME", "TYPE", "SELECTOR", "SERVICES", "LABELS", "VERSION", "AGE",
    ]  # fmt: skip
    assert table(apps.out)[1][:5] == ["bridge", "container", "site=paris", "web", "team=ot"]
    nodes = await run("node", "list")
    assert table(nodes.out)[1][:3] == ["edge-01", "no", "bridge"]
    configs = await run("config", "list")
    assert table(configs.out)[0][:2] == ["NAME", "KEYS"]
    assert table(configs.out)[1][:2] == ["bridge-conf", "app.yaml"]

    again = await run("apply", "-f", file)
    assert again.out.count("unchanged") == 4  # the registry's password cannot be compared
    assert "registry/company configured" in again.out


async def test_secret_values_never_in_tables(run: Cli, token: str, tmp_path: Path) -> None:
    """Tables show a secret's keys, never its values; registry passwords are never shown at all."""
    file = write(
        tmp_path / "s.yaml",
        [sample("secrets", "creds", kind="Secret"), sample("registries", "hub", kind="Registry")],
    )
    assert (await run("apply", "-f", file)).code == 0

    listed = await run("secret", "list")
    assert table(listed.out)[0] == ["NAME", "LABELS", "VERSION", "AGE"]  # lists carry no data
    got = await run("secret", "get", "creds")
    assert table(got.out)[0][:2] == ["NAME", "KEYS"]
    assert table(got.out)[1][:2] == ["creds", "password"]
    for output in (listed.out, got.out):
        assert "hunter2-plaintext" not in output
    # -o json is the API's JSON: a secret's own GET does return its data.
    assert (await run("secret", "get", "creds", "-o", "json")).json()["data"] == {
        "password": "hunter2-plaintext"
    }

    for argv in (("list",), ("get", "hub"), ("get", "hub", "-o", "yaml")):
        shown = await run("registry", *argv)
        assert "registry-plaintext-pw" not in shown.out
    assert table((await run("registry", "list")).out)[1][:3] == [
        "hub", "registry.example.com:5000/team", "robot",
    ]  # fmt: skip


async def test_certificate_table_and_no_key(run: Cli, token: str, tmp_path: Path) -> None:
    """A certificate's row shows its DNS names and expiry; its key is never printed."""
    key, _ = key_and_certificate()
    file = write(tmp_path / "c.yaml", [sample("certificates", "plc")])
    assert (await run("certificate", "create", "-f", file)).code == 0

    listed = await run("certificate", "list")
    header, row = table(listed.out)
    assert header[:3] == ["NAME", "DNS-NAMES", "NOT-AFTER"]
    assert row[:2] == ["plc", "plc.example.com"]
    shown = await run("certificate", "get", "plc", "-o", "yaml")
    assert "-----BEGIN CERTIFICATE-----" in shown.out
    assert key.splitlines()[1] not in shown.out + listed.out


async def test_list_filters_by_selector_and_name(run: Cli, token: str, tmp_path: Path) -> None:
    """--selector and --name reach the API; -o yaml prints every matching item."""
    file = write(
        tmp_path / "nodes.yaml",
        [
            sample("nodes", "paris-1"),
            sample("nodes", "paris-2"),
            sample("nodes", "lyon-1", labels={"site": "lyon"}),
        ],
    )
    assert (await run("node", "create", "-f", file)).code == 0

    paris = await run("node", "list", "--selector", "site=paris", "-o", "json")
    assert [item["name"] for item in paris.json()["items"]] == ["paris-1", "paris-2"]
    named = yaml.safe_load((await run("node", "list", "--name", "lyon", "-o", "yaml")).out)
    assert named["total"] == 1
    assert named["items"][0]["labels"] == {"site": "lyon"}

    none = await run("node", "list", "--selector", "site=rome")
    assert (none.code, none.out, none.err) == (0, "", "No nodes found.\n")


async def test_validation_error_names_the_field_and_the_rest_goes_on(
    run: Cli, token: str, tmp_path: Path
) -> None:
    """The API's message names the field; the other objects of the file are still written."""
    broken = sample("apps", "broken")
    del broken["services"][0]["image"]
    file = write(tmp_path / "apps.yaml", [broken, sample("apps", "fine")])

    result = await run("app", "create", "-f", file)
    assert result.code == 1
    assert result.out == "app/fine created\n"
    assert result.err.startswith("error: app/broken: services[0].image is required")
    assert "(requestId " in result.err

    taken = await run("app", "create", "-f", file)
    assert "app/fine: " in taken.err
    assert "already" in taken.err


async def test_file_mistakes_stop_before_any_request(run: Cli, token: str, tmp_path: Path) -> None:
    """A wrong kind, a missing kind or a nameless object is refused before anything is sent."""
    mixed = write(
        tmp_path / "mixed.yaml", [sample("nodes", "n1"), sample("apps", "a1", kind="App")]
    )
    wrong = await run("node", "create", "-f", mixed)
    assert wrong.code == 1
    assert "object 2 is a App" in wrong.err
    assert "baetyl apply -f" in wrong.err

    kindless = await run("apply", "-f", mixed)
    assert kindless.code == 1
    assert "object 1 has no kind" in kindless.err
    assert "Node, App, Config, Secret, Registry, Certificate" in kindless.err

    nameless = write(tmp_path / "nameless.yaml", [{"labels": {"a": "b"}}])
    assert "has no name" in (await run("node", "apply", "-f", nameless)).err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert "is not valid YAML at line" in (await run("node", "apply", "-f", str(bad))).err
    missing = await run("node", "apply", "-f", str(tmp_path / "nope.yaml"))
    assert "Cannot read" in missing.err

    assert (await run("node", "list", "-o", "json")).json()["items"] == []


async def test_bad_token_is_refused_and_not_echoed(
    run: Cli, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown token gets the API's 401 message; the token itself is never printed."""
    forged = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    monkeypatch.setenv("BAETYL_API_TOKEN", forged)
    result = await run("app", "list")
    assert result.code == 1
    assert result.err.startswith("error: The bearer token is unknown, revoked or expired")
    flag = await run("app", "list", "--token", forged)
    assert flag.code == 1
    assert forged not in result.err + result.out + flag.err + flag.out


async def test_node_init_prints_the_install_command(run: Cli, token: str, tmp_path: Path) -> None:
    """node init prints the activation command on stdout and its expiry on stderr."""
    assert (
        await run("node", "create", "-f", write(tmp_path / "n.yaml", [sample("nodes", "gw")]))
    ).code == 0
    result = await run("node", "init", "gw")
    assert result.code == 0
    assert result.out.startswith("baetyl edge activate --url https://")
    assert "--token " in result.out
    assert "works once" in result.err
    assert set((await run("node", "init", "gw", "-o", "json")).json()) == {
        "cmd",
        "token",
        "expiresAt",
    }


async def test_node_revoke_init_makes_earlier_install_commands_fail(
    cloud: RunningCloud, run: Cli, token: str, tmp_path: Path
) -> None:
    """node revoke-init revokes (what that does: test_activation.py); a missing node fails."""
    assert (
        await run("node", "create", "-f", write(tmp_path / "n.yaml", [sample("nodes", "gw")]))
    ).code == 0
    result = await run("node", "revoke-init", "gw")
    assert result.code == 0
    assert "revoked the install commands of node gw" in result.out
    node = await cloud.context.store.get("default", Kind.NODE, "gw")
    assert node.body["installGeneration"] == 1
    missing = await run("node", "revoke-init", "nope")
    assert missing.code == 1
    assert missing.err.startswith("error: ")


async def test_server_down_says_what_to_check(run: Cli) -> None:
    """A refused connection prints the address and what to check, and exits 1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = await run("node", "list", "--api-url", url, "--token", "bt_secret-token")
    assert result.code == 1
    assert result.err.startswith(f"error: Nothing answers at {url} (connection refused)")
    assert "baetyl up" in result.err
    assert "bt_secret-token" not in result.err


def test_endpoint_flags_then_environment_then_file(tmp_path: Path) -> None:
    """The address and token come from flags, else the environment, else the client config."""
    config = tmp_path / "client.toml"
    config.write_text('url = "http://cloud.example:9004/"\ntoken = "from-file"\n')
    env = {"BAETYL_CLIENT_CONFIG": str(config)}
    assert resolve_endpoint(None, None, env).url == "http://cloud.example:9004"
    assert resolve_endpoint(None, None, env).token == "from-file"
    env |= {"BAETYL_API_URL": "https://env.example", "BAETYL_API_TOKEN": "from-env"}
    assert resolve_endpoint(None, None, env).url == "https://env.example"
    assert resolve_endpoint(None, None, env).token == "from-env"
    flagged = resolve_endpoint("http://flag.example", "from-flag", env)
    assert (flagged.url, flagged.token) == ("http://flag.example", "from-flag")
    assert "from-flag" not in repr(flagged)
    default = resolve_endpoint(None, None, {"XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert (default.url, default.token) == (DEFAULT_URL, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('url = "http://a"\npassword = "x"\n', "unknown key 'password'"),
        ("url = 9004\n", "url must be a string"),
        ("url = \n", "is not valid TOML"),
        ('url = "ftp://a"\n', "is not an http(s) address"),
        (None, "which does not exist"),
    ],
)
def test_client_config_mistakes(tmp_path: Path, content: str | None, message: str) -> None:
    """A bad client configuration file is an error naming the file and the fix."""
    config = tmp_path / "client.toml"
    if content is not None:
        config.write_text(content)
    with pytest.raises(ClientError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_endpoint(None, None, {"BAETYL_CLIENT_CONFIG": str(config)})


async def test_client_commands_read_no_cloud_configuration(
    cloud: RunningCloud, run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client commands use the client config file and never load the cloud's baetyl.toml."""
    broken = tmp_path / "baetyl.toml"
    broken.write_text("this is = not [valid toml\n")
    config = tmp_path / "client.toml"
    config.write_text(f'url = "{cloud.api_url}"\ntoken = "{await cloud.token("default")}"\n')
    monkeypatch.setenv("BAETYL_CONFIG", str(broken))
    monkeypatch.setenv("BAETYL_CLIENT_CONFIG", str(config))
    result = await run("app", "list", "-o", "json")
    assert result.code == 0, result.err
    assert result.json() == {"total": 0, "items": []}
    assert (await run("config", "show")).err.startswith("error: ")  # the cloud's command does


def test_node_get_shows_each_apps_reported_status_and_cause() -> None:
    """From the node's view: reported status and cause per desired app; an app not reported yet
    is Pending, one reported at another version says the desired one is not applied yet."""
    from management.cli.resources import app_statuses, render_app_statuses

    node = {
        "name": "gw-1",
        "apps": [{"name": "web", "version": "3"}, {"name": "fn", "version": "2"},
                 {"name": "new", "version": "1"}],
        "report": {"appstats": [
            {"name": "web", "version": "3", "status": "Running", "cause": ""},
            {"name": "fn", "version": "1", "status": "Failed", "cause": "exited with code 1"},
        ]},
    }  # fmt: skip
    assert app_statuses(node) == [
        ["web", "3", "Running", "<none>"],
        ["fn", "1", "Failed", "version 2 not applied yet; exited with code 1"],
        ["new", "1", "Pending", "not reported by the node yet"],
    ]
    assert table(render_app_statuses(node))[0] == ["APP", "VERSION", "STATUS", "CAUSE"]
    assert render_app_statuses({"name": "idle", "apps": [], "report": {}}) == ""


def test_node_get_shows_the_node_broker_the_agent_runs_and_why_it_does_not() -> None:
    """The agent's system app (never desired, so not in ``apps``) has a row too: a node broker
    that keeps failing (its port taken) is seen, and one that cannot start says why."""
    from management.cli.resources import app_statuses

    failing = {
        "name": "gw-1",
        "apps": [{"name": "web", "version": "1"}],
        "report": {"appstats": [
            {"name": "web", "version": "1", "status": "Running", "cause": ""},
            {"name": "baetyl-broker", "version": "sys-1", "status": "Failed",
             "cause": "exited with code 2"},
        ], "nodebroker": {"enabled": True, "error": None}},
    }  # fmt: skip
    assert app_statuses(failing) == [
        ["web", "1", "Running", "<none>"],
        ["baetyl-broker", "sys-1", "Failed", "exited with code 2"],
    ]
    no_certificate = {
        "name": "gw-1",
        "apps": [],
        "report": {"nodebroker": {"enabled": True, "error": "no server certificate yet"}},
    }
    assert app_statuses(no_certificate) == [
        ["baetyl-broker", "<none>", "NotRunning", "no server certificate yet"]
    ]


@pytest.mark.parametrize(
    ("seconds", "age"),
    [(5, "5s"), (59, "59s"), (60, "1m"), (119, "1m"), (120, "2m"), (3599, "59m"),
     (3600, "1h"), (86399, "23h"), (86400, "1d"), (3 * 86400 + 5, "3d")],
)  # fmt: skip
def test_the_age_column_uses_the_largest_unit_that_fits(seconds: int, age: str) -> None:
    """AGE reads alike across a list: 119 s shows as 1m beside 2m, never as 119s."""
    created = datetime.now(UTC) - timedelta(seconds=seconds, milliseconds=300)
    item = {"name": "gw-1", "createTime": created.isoformat().replace("+00:00", "Z")}
    header, row = table(render_table(KINDS["node"], [item]))
    assert row[header.index("AGE")] == age


# -- devices and routes ----------------------------------------------------------------------------


async def test_devices_and_routes_apply_list_get_password_and_delete(
    run: Cli, token: str, tmp_path: Path, cloud: RunningCloud
) -> None:
    """One file of a node, a device and a route applied in dependency order; the device's
    password printed once; its ONLINE column; routes listed; everything deleted."""
    file = write(
        tmp_path / "plane.yaml",
        [
            {"kind": "Route", "name": "up", "selector": "site=paris",
             "source": {"local": "devices/+/telemetry"}, "target": {"cloud": "t/{device}"}},
            {"kind": "Device", "name": "thermo-1", "node": "gw-1"},
            {"kind": "Node", "name": "gw-1", "labels": {"site": "paris"}},
        ],
    )  # fmt: skip
    applied = await run("apply", "-f", file)
    assert applied.code == 0, applied.err
    assert applied.out.splitlines() == [
        "node/gw-1 created", "device/thermo-1 created", "route/up created",
    ]  # fmt: skip
    again = await run("apply", "-f", file)
    assert again.out.splitlines() == [
        "node/gw-1 unchanged", "device/thermo-1 unchanged", "route/up unchanged",
    ]  # fmt: skip

    listed = await run("device", "list")
    header, row = table(listed.out)
    assert header[:4] == ["NAME", "NODE", "ONLINE", "CREDENTIALS"]
    assert row[:4] == ["thermo-1", "gw-1", "no", "<none>"]

    ca_file = tmp_path / "device-ca.crt"
    password = await run("device", "password", "thermo-1", "--ca-out", str(ca_file))
    assert password.code == 0, password.err
    assert ca_file.read_bytes() == cloud.context.devices_ca.certificate_pem  # the node broker's
    lines = dict(line.split(": ", 1) for line in password.out.splitlines())
    assert lines["username"] == "thermo-1"
    assert len(lines["password"]) >= 20
    assert "shown this once" in password.err
    got = await run("device", "get", "thermo-1", "-o", "json")
    assert got.json()["password"] is True
    assert lines["password"] not in got.out
    assert table((await run("device", "list")).out)[1][3] == "password"
    removed = await run("device", "password", "thermo-1", "--remove")
    assert removed.code == 0, removed.err
    assert (await run("device", "get", "thermo-1", "-o", "json")).json()["password"] is False

    routes = await run("route", "list")
    header, row = table(routes.out)
    assert header[:5] == ["NAME", "SELECTOR", "SOURCE", "FUNCTION", "TARGET"]
    assert row[:5] == [
        "up",
        "site=paris",
        "local:devices/+/telemetry",
        "<none>",
        "cloud:t/{device}",
    ]

    refused = await run("node", "delete", "gw-1")
    assert refused.code == 1
    assert "thermo-1" in refused.err
    deleted = await run("device", "delete", "thermo-1")
    assert deleted.out == "device/thermo-1 deleted\n"
    assert (await run("route", "delete", "up")).code == 0
    assert (await run("node", "delete", "gw-1")).code == 0


async def test_certs_issue_device_talks_to_the_api(
    run: Cli, token: str, cloud: RunningCloud, tmp_path: Path
) -> None:
    """``baetyl certs issue device`` sends the CSR to the API and writes the certificate and
    the device CA; the serial is listed in the device; a bad CSR is one error line."""
    from cryptography import x509

    from certs import Identity, build_csr, generate_private_key

    await run("apply", "-f", write(tmp_path / "d.yaml", [
        {"kind": "Node", "name": "gw-1"}, {"kind": "Device", "name": "thermo-1", "node": "gw-1"},
    ]))  # fmt: skip
    csr = tmp_path / "dev.csr"
    csr.write_bytes(build_csr(generate_private_key()))
    out, ca_out = tmp_path / "dev.crt", tmp_path / "device-ca.crt"
    issued = await run("certs", "issue", "device", "thermo-1", "--csr", str(csr),
                       "--out", str(out), "--ca-out", str(ca_out))  # fmt: skip
    assert issued.code == 0, issued.err
    certificate = x509.load_pem_x509_certificate(out.read_bytes())
    assert Identity.from_certificate(certificate) == Identity.device("default", "gw-1", "thermo-1")
    assert ca_out.read_bytes() == cloud.context.device_ca.certificate_pem
    serial = format(certificate.serial_number, "x")
    assert serial in issued.out
    got = (await run("device", "get", "thermo-1", "-o", "json")).json()
    assert [c["serial"] for c in got["certificates"]] == [serial]
    shown = await run("device", "get", "thermo-1")
    assert serial in shown.out

    csr.write_text("not a CSR")
    bad = await run("certs", "issue", "device", "thermo-1", "--csr", str(csr), "--out", str(out))
    assert bad.code == 1
    assert bad.err.startswith("error: ")
    assert len(bad.err.strip().splitlines()) == 1

"""The typed configuration: layers, coercion, and refusal of unknown or bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from management.config import BrokerSettings, ConfigError, LogLevel, Settings, load_settings


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_file(tmp_path: Path) -> None:
    """With no file and no environment the embedded defaults apply."""
    settings = load_settings(data_dir=tmp_path, environ={})
    assert settings == Settings(data_dir=tmp_path)
    assert settings.broker.port == 8883
    assert settings.ca_dir == tmp_path / "ca"


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    """Later layers win: file < BAETYL_* environment < --set overrides."""
    _write(tmp_path / "baetyl.toml", "[broker]\nport = 1000\nmax_connections = 10\n")
    env = {"BAETYL_BROKER__PORT": "2000", "BAETYL_LOG_LEVEL": "DEBUG"}
    settings = load_settings(data_dir=tmp_path, environ=env, overrides=["broker.port=3000"])
    assert settings.broker.port == 3000
    assert settings.broker.max_connections == 10
    assert settings.log_level is LogLevel.DEBUG


def test_data_dir_from_environment(tmp_path: Path) -> None:
    """BAETYL_DATA_DIR chooses the data directory and so the default config file in it."""
    _write(tmp_path / "baetyl.toml", "[pki]\nnode_cert_days = 30\n")
    settings = load_settings(environ={"BAETYL_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.pki.node_cert_days == 30


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    """A typo in the file is refused with the key named and the known keys listed."""
    _write(tmp_path / "baetyl.toml", "[broker]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'broker\.prot'.*broker\.port"):
        load_settings(data_dir=tmp_path, environ={})


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """An unknown top-level section is refused by name."""
    _write(tmp_path / "baetyl.toml", "[brokr]\nport = 1\n")
    with pytest.raises(ConfigError, match="'brokr'"):
        load_settings(data_dir=tmp_path, environ={})


def test_unknown_environment_key_is_named(tmp_path: Path) -> None:
    """A BAETYL_ variable that names no key is refused, not ignored."""
    with pytest.raises(ConfigError, match=r"'broker\.prt'"):
        load_settings(data_dir=tmp_path, environ={"BAETYL_BROKER__PRT": "1"})


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ('[bus]\nsharing = "shared"\n', {}, "bus.sharing"),
        ('[bus]\nsharing = "partitioned"\n', {}, "bus.sharing"),
        ("", {"BAETYL_BUS__SHARE_GROUP": "baetyl"}, "bus.share_group"),
    ],
)
def test_removed_sharing_keys_say_what_to_do(
    tmp_path: Path, text: str, environ: dict[str, str], key: str
) -> None:
    """An old config naming bus.sharing or bus.share_group is told the mode is gone, and to
    delete the key: not "unknown key", and never a silent fallback."""
    _write(tmp_path / "baetyl.toml", text)
    with pytest.raises(ConfigError, match=rf"'{key}' was removed.*Delete {key}") as raised:
        load_settings(data_dir=tmp_path, environ=environ)
    assert "node id" in str(raised.value) or "bus.sharing" in str(raised.value)


def test_removed_sharing_key_on_the_command_line(tmp_path: Path) -> None:
    """--set bus.sharing=shared (what export-config used to print for EMQX) is refused too."""
    with pytest.raises(ConfigError, match=r"'bus\.sharing' was removed"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["bus.sharing=shared"])


def test_client_and_app_variables_are_not_settings(tmp_path: Path) -> None:
    """The README exports BAETYL_API_TOKEN/URL in the shell that runs the cloud's commands:
    the client's variables and other programs' BAETYL_* names are no settings."""
    from management.cli.client import CONFIG_ENV, TOKEN_ENV, URL_ENV

    env = {
        URL_ENV: "http://127.0.0.1:9004",
        TOKEN_ENV: "bt_0123456789ab_x",
        CONFIG_ENV: "/nowhere/client.toml",
        "BAETYL_APP_NAME": "web",  # what the agent gives the apps it starts
        "BAETYL_FUNCTION_PORT": "50080",
        "BAETYL_BROKER__PORT": "2000",
    }
    settings = load_settings(data_dir=tmp_path, environ=env)
    assert settings == Settings(data_dir=tmp_path, broker=BrokerSettings(port=2000))


def test_a_setting_with_one_underscore_is_refused(tmp_path: Path) -> None:
    """BAETYL_BROKER_PORT looks like a setting with a typo: refused with the right name."""
    with pytest.raises(ConfigError, match=r"BAETYL_BROKER_PORT .*BAETYL_BROKER__PORT"):
        load_settings(data_dir=tmp_path, environ={"BAETYL_BROKER_PORT": "1"})
    with pytest.raises(ConfigError, match=r"BAETYL_API__HOST"):
        load_settings(data_dir=tmp_path, environ={"BAETYL_API_HOST": "127.0.0.2"})


def test_bad_value_names_key_and_fix(tmp_path: Path) -> None:
    """A value of the wrong type is refused naming the key."""
    with pytest.raises(ConfigError, match=r"broker\.port must be a number"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["broker.port=eighty"])
    with pytest.raises(ConfigError, match="65535"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["broker.port=70000"])
    with pytest.raises(ConfigError, match="use one of: debug"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["log_level=loud"])


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    """A config file that is not TOML is refused with the file named."""
    path = _write(tmp_path / "baetyl.toml", "[broker\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_settings(data_dir=tmp_path, environ={})


def test_explicit_missing_config_file_is_an_error(tmp_path: Path) -> None:
    """Naming a config file that does not exist is an error, not silently the defaults."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(data_dir=tmp_path, config_file=tmp_path / "nope.toml", environ={})


def test_lists_and_optional_values(tmp_path: Path) -> None:
    """Lists come from TOML arrays or comma-separated strings; 'none' clears an optional port."""
    _write(tmp_path / "baetyl.toml", '[pki]\nserver_dns_names = ["a.example", "b.example"]\n')
    settings = load_settings(
        data_dir=tmp_path,
        environ={"BAETYL_PKI__SERVER_IPS": "10.0.0.1, ::1"},
        overrides=["broker.ws_port=none"],
    )
    assert settings.pki.server_dns_names == ("a.example", "b.example")
    assert settings.pki.server_ips == ("10.0.0.1", "::1")
    assert settings.broker.ws_port is None


def test_server_ip_must_be_an_address(tmp_path: Path) -> None:
    """A host name among the server IPs is refused with a pointer to the right key."""
    with pytest.raises(ConfigError, match="server_dns_names"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["pki.server_ips=example.com"])


def test_data_dir_cannot_be_set_in_file(tmp_path: Path) -> None:
    """The data directory is chosen before the file is read, so the file may not set it."""
    _write(tmp_path / "baetyl.toml", 'data_dir = "/elsewhere"\n')
    with pytest.raises(ConfigError, match="--data-dir"):
        load_settings(data_dir=tmp_path, environ={})


def test_malformed_override(tmp_path: Path) -> None:
    """--set without '=' is refused with an example of the right form."""
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_settings(data_dir=tmp_path, environ={}, overrides=["broker.port"])

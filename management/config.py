"""The one typed configuration tree of the cloud process.

Parsed once at start from three layers, later ones winning:

1. ``baetyl.toml`` in the data directory (or the file named by ``--config`` / ``BAETYL_CONFIG``);
2. environment variables ``BAETYL_<SECTION>__<KEY>`` (``BAETYL_BROKER__PORT=8884``) and
   ``BAETYL_LOG_LEVEL``; the other ``BAETYL_*`` variables belong to other programs (the API
   client's ``BAETYL_API_TOKEN``, an app's ``BAETYL_APP_NAME``) and are not settings;
3. command-line overrides (``--set broker.port=8884`` and the flags of each command).

Unknown keys are refused with the key named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from broker import BrokerSettings
from management.errors import ManagementError
from shadow import ShadowSettings

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_DATA_DIR",
    "ApiSettings",
    "BrokerSettings",
    "BusMode",
    "BusSettings",
    "ConfigError",
    "DatabaseSettings",
    "LogLevel",
    "PKISettings",
    "Settings",
    "ShadowSettings",
    "load_settings",
]

DEFAULT_DATA_DIR = Path("baetyl-data")
CONFIG_FILE_NAME = "baetyl.toml"
ENV_PREFIX = "BAETYL_"
# Environment variables that are not configuration keys but select where configuration lives.
_ENV_LOCATORS = frozenset({"BAETYL_DATA_DIR", "BAETYL_CONFIG"})
# The API client's variables (management/cli/apiclient.py), known by name: the README exports them
# in the shell that also runs 'baetyl up' and 'baetyl certs', and BAETYL_API_* would otherwise
# read as the api section. Named here rather than imported: the client module loads the API's
# schemas, which settings have no use for.
_ENV_CLIENT = frozenset({"BAETYL_API_URL", "BAETYL_API_TOKEN", "BAETYL_CLIENT_CONFIG"})


class ConfigError(ManagementError):
    """The configuration is invalid; the message names the key and the source."""


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PKISettings:
    """The certificate authority and the certificates it issues."""

    ca_common_name: str = "pybaetyl CA"
    key_type: str = "ec-p256"
    node_cert_days: int = 365
    operator_cert_days: int = 90
    service_cert_days: int = 365
    server_cert_days: int = 825
    server_dns_names: tuple[str, ...] = ("localhost",)
    server_ips: tuple[str, ...] = ("127.0.0.1", "::1")

    def __post_init__(self) -> None:
        for name in (
            "node_cert_days",
            "operator_cert_days",
            "service_cert_days",
            "server_cert_days",
        ):
            days = getattr(self, name)
            if not 1 <= days <= 3650:
                raise ConfigError(f"pki.{name} is {days}; use a number of days from 1 to 3650.")
        for ip in self.server_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ConfigError(
                    f"pki.server_ips holds {ip!r}, which is not an IP address; "
                    "put host names in pki.server_dns_names."
                ) from None


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The management API (plain HTTP, loopback by default) and the activation endpoint (HTTPS)."""

    host: str = "127.0.0.1"
    port: int = 9004
    activation_host: str = "0.0.0.0"  # noqa: S104 # nodes activate from the network
    activation_port: int = 9003
    public_host: str = "localhost"  # the name nodes use to reach the broker and activation
    install_token_ttl: int = 3600  # seconds an install command stays usable

    def __post_init__(self) -> None:
        for name in ("port", "activation_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"api.{name} is {port}; use a TCP port from 0 to 65535.")
        if not 60 <= self.install_token_ttl <= 7 * 86400:
            raise ConfigError("api.install_token_ttl must be from 60 seconds to 7 days.")
        if not self.public_host:
            raise ConfigError("api.public_host must name this server as nodes reach it.")


class BusMode(StrEnum):
    EMBEDDED = "embedded"  # the in-process broker (one machine)
    EXTERNAL = "external"  # an existing MQTT cluster, shared by several cloud replicas


@dataclass(frozen=True, slots=True)
class BusSettings:
    """How the cloud reaches MQTT: its own embedded broker, or an external broker cluster.

    In external mode the cloud is a privileged MQTT 5 client of ``url`` (mTLS with a service
    certificate from our CA), splits the node requests with the other replicas by node id
    (shadow/server/mqttbus.py), and tells activated nodes to connect to ``public_address``.
    """

    mode: BusMode = BusMode.EMBEDDED
    url: str = ""  # external: mqtts://<host>:<port> of the broker cluster
    public_address: str = ""  # external: <host>:<port> nodes connect to (default: from url)
    client_id: str = ""  # external: this replica's client id suffix (default: the host name)
    ca_file: str = ""  # external: CA of the broker's server certificate (default: our CA)
    keepalive: int = 30

    def __post_init__(self) -> None:
        if self.mode is BusMode.EXTERNAL:
            _mqtts_address(self.url, "bus.url")
            if self.public_address:
                _host_port(self.public_address, "bus.public_address")
        if any(c in self.client_id for c in "/+#"):
            raise ConfigError("bus.client_id may not hold '/', '+' or '#'.")
        if not 5 <= self.keepalive <= 3600:
            raise ConfigError("bus.keepalive must be from 5 to 3600 seconds.")

    @property
    def broker_address(self) -> tuple[str, int]:
        """``(host, port)`` of the external broker."""
        return _mqtts_address(self.url, "bus.url")

    @property
    def node_address(self) -> tuple[str, int]:
        """``(host, port)`` nodes are told to connect to in external mode."""
        if self.public_address:
            return _host_port(self.public_address, "bus.public_address")
        return self.broker_address


def _mqtts_address(url: str, key: str) -> tuple[str, int]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "mqtts":
        raise ConfigError(
            f"{key} is {url!r}; in external mode name the broker as mqtts://<host>:<port> "
            "(the cloud connects with mutual TLS only)."
        )
    return _host_port(rest.rstrip("/"), key)


def _host_port(text: str, key: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ConfigError(f"{key} is {text!r}; write it as <host>:<port>, e.g. mqtt.example:8883.")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where shadows (and later every resource) are stored."""

    url: str = ""  # empty: SQLite in <data-dir>/baetyl.db

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("sqlite://", "mysql://")):
            raise ConfigError(
                "database.url must be sqlite:///<path> or mysql://<user>:<password>@<host>:<port>/"
                "<database> (or empty for SQLite in the data directory)."
            )

    def redacted(self) -> str:
        """The URL with its password masked, for logs and ``config show``."""
        scheme, sep, rest = self.url.partition("://")
        credentials, at, host = rest.rpartition("@")
        if not sep or not at or ":" not in credentials:
            return self.url
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the cloud process is configured with."""

    data_dir: Path = DEFAULT_DATA_DIR
    log_level: LogLevel = LogLevel.INFO
    pki: PKISettings = field(default_factory=PKISettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    api: ApiSettings = field(default_factory=ApiSettings)

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        if self.database.url:
            return self.database.url
        return f"sqlite://{(self.data_dir / 'baetyl.db').resolve()}"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def device_ca_dir(self) -> Path:
        """The device CA: devices' client certificates and node brokers' server certificates.
        Never trusted by the cloud broker nor by the agents for the cloud."""
        return self.data_dir / "device-ca"

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def keys_dir(self) -> Path:
        """Keys of the API: secrets at rest, activation token signing (0700, files 0600)."""
        return self.data_dir / "keys"

    @property
    def broker_sessions_file(self) -> Path:
        """The embedded broker's persistent sessions, saved on a graceful stop (0600, in a 0700
        directory: queued payloads may be sensitive); see broker/snapshot.py."""
        return self.data_dir / "broker" / "sessions.msgpack"


T = TypeVar("T")


def load_settings(
    *,
    data_dir: Path | None = None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from the config file, the environment and ``key=value`` overrides."""
    env = os.environ if environ is None else environ
    if data_dir is None:
        data_dir = Path(env["BAETYL_DATA_DIR"]) if env.get("BAETYL_DATA_DIR") else DEFAULT_DATA_DIR
    explicit_file = config_file is not None or bool(env.get("BAETYL_CONFIG"))
    if config_file is None:
        config_file = Path(env["BAETYL_CONFIG"]) if env.get("BAETYL_CONFIG") else None
    if config_file is None:
        config_file = data_dir / CONFIG_FILE_NAME

    tree: dict[str, Any] = {}
    if config_file.exists():
        _merge(tree, _read_toml(config_file), str(config_file))
    elif explicit_file:
        raise ConfigError(f"The config file {config_file} does not exist; check the path.")
    _merge(tree, _from_environ(env), "the environment")
    _merge(tree, _from_overrides(overrides), "--set")
    if "data_dir" in tree:
        raise ConfigError(
            "data_dir cannot be set inside the configuration; use --data-dir or BAETYL_DATA_DIR."
        )
    tree["data_dir"] = str(data_dir)
    return _build(Settings, tree, "")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The config file {path} is not valid TOML: {exc}.") from None
    except OSError as exc:
        raise ConfigError(f"The config file {path} cannot be read: {exc.strerror}.") from None


def _from_environ(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings among the ``BAETYL_*`` variables.

    A setting is ``BAETYL_<SECTION>__<KEY>`` (two underscores) or a top-level key
    (``BAETYL_LOG_LEVEL``). Other ``BAETYL_*`` names are other programs' (the API client, the
    apps the agent starts) and are left alone, except one that starts with a section's name and
    one underscore, ``BAETYL_BROKER_PORT``: a setting with a typo, refused rather than ignored.
    """
    sections, top_level = _setting_names()
    tree: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_LOCATORS or name in _ENV_CLIENT:
            continue
        rest = name[len(ENV_PREFIX) :]
        if "__" not in rest:
            if rest.lower() in top_level:
                _set_path(tree, [rest.lower()], value, f"environment variable {name}")
            elif rest.split("_", 1)[0].lower() in sections:
                section, _sep, key = rest.partition("_")
                raise ConfigError(
                    f"The environment variable {name} is not a config key; a setting's variable "
                    f"has two underscores between section and key: {ENV_PREFIX}{section}__{key}."
                )
            continue
        path = [part.lower() for part in rest.split("__")]
        if not all(path):
            raise ConfigError(
                f"The environment variable {name} is not a config key; "
                "use BAETYL_<SECTION>__<KEY>, e.g. BAETYL_BROKER__PORT."
            )
        _set_path(tree, path, value, f"environment variable {name}")
    return tree


def _setting_names() -> tuple[frozenset[str], frozenset[str]]:
    """The sections of :class:`Settings` and its top-level keys an environment variable may set."""
    sections: set[str] = set()
    top_level: set[str] = set()
    for item in dataclasses.fields(Settings):
        if item.name == "data_dir":  # a locator: BAETYL_DATA_DIR
            continue
        is_section = dataclasses.is_dataclass(typing.get_type_hints(Settings)[item.name])
        (sections if is_section else top_level).add(item.name)
    return frozenset(sections), frozenset(top_level)


def _from_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r} is not KEY=VALUE; write e.g. --set broker.port=8884."
            )
        _set_path(tree, key.strip().split("."), value, f"--set {key}")
    return tree


def _set_path(tree: dict[str, Any], path: list[str], value: str, source: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source} sets a key below {part!r}, which is not a section.")
        node = child
    node[path[-1]] = value


def _merge(into: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value, source)
        else:
            into[key] = value


# Keys that existed once: naming one is an error that says what replaced it, not "unknown key".
_REMOVED = {
    "bus.sharing": (
        "The config key 'bus.sharing' was removed: MQTT 5 shared subscriptions could not be "
        "tested on a broker here, so the replicas now always split the nodes between them by "
        "node id, which works on every broker. Delete bus.sharing (from baetyl.toml, "
        "BAETYL_BUS__SHARING or --set); nothing else needs to change."
    ),
    "bus.share_group": (
        "The config key 'bus.share_group' was removed with bus.sharing=shared, the only mode "
        "that used it. Delete bus.share_group (from baetyl.toml, BAETYL_BUS__SHARE_GROUP or "
        "--set, or the Helm value bus.shareGroup); nothing else needs to change."
    ),
}


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    """Build the dataclass ``cls`` from ``data``, refusing unknown keys and coercing strings."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'The configuration'} must be a table of keys.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    for name in unknown:
        if prefix + name in _REMOVED:
            raise ConfigError(_REMOVED[prefix + name])
    if unknown:
        known = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"Unknown config key {prefix + unknown[0]!r}; known keys here: {known}.")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a section's own validation, e.g. a port out of range
        raise ConfigError(str(exc)) from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(options[0], value, key)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, f"{key}.")
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(hint)
        items = (
            [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        )
        if not isinstance(items, list | tuple):
            raise ConfigError(f"Config key {key} must be a list, got {value!r}.")
        return tuple(_coerce(item_type, item, key) for item in items)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(str(value).lower())
        except ValueError:
            allowed = ", ".join(member.value for member in hint)
            raise ConfigError(f"Config key {key} is {value!r}; use one of: {allowed}.") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"Config key {key} is {value!r}; use true or false.")
    if hint is int or hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"Config key {key} must be a number, got {value!r}.")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Config key {key} must be a number, got {value!r}.") from None
    if hint is Path:
        return Path(str(value))
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"Config key {key} must be a string, got {value!r}.")
        return value
    raise ConfigError(f"Config key {key} has an unsupported type {hint!r}.")  # pragma: no cover

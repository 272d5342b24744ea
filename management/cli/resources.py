"""The resource kinds the client commands handle: how files of them are read and how they print.

::

    KINDS["app"]                         # collection "apps", table columns, schemas
    load_manifests("deploy.yaml", None)  # [Manifest(kind, body, where), ...], kinds from the file
    render_table(kind, items)            # or render(value, "json" | "yaml")

A file holds one object, a list of objects, several YAML documents, or a list response (an
object with ``items``), so the output of ``-o yaml`` can be edited and applied again: the fields
the server sets (``version``, ``createTime``, a node's ``online``...) are dropped on reading.
Tables never show secret values: a secret's row shows its keys only. PyYAML and the API's
schemas are loaded when a file is read or YAML printed, not for a table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import yaml

__all__ = [
    "APPLY_ORDER",
    "KINDS",
    "Column",
    "Manifest",
    "ManifestFileError",
    "ResourceKind",
    "kind_named",
    "load_manifests",
    "render",
    "render_app_statuses",
    "render_devices",
    "render_properties",
    "render_routes",
    "render_table",
    "server_fields",
]

NONE = "<none>"


class ManifestFileError(Exception):
    """A file given with ``-f`` cannot be read as resource objects; the message says why."""


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header and how a cell is made from an item of the API."""

    header: str
    cell: Callable[[Mapping[str, Any]], str]
    field: str | None = None  # when set, the column is left out if no item carries this field


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """A kind of resource as the client commands see it."""

    word: str  # the command word, e.g. node
    kind: str  # the manifest's kind: value, e.g. Node
    collection: str  # the API collection, e.g. nodes
    read_schema: str
    write_schema: str
    columns: tuple[Column, ...]
    help: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """One object read from a file: its kind, the body to send, and where it came from."""

    kind: ResourceKind
    body: dict[str, Any]
    where: str  # "deploy.yaml, object 2", for messages

    @property
    def name(self) -> str:
        return str(self.body["name"])

    @property
    def ref(self) -> str:
        return f"{self.kind.word}/{self.name}"


# -- table cells -----------------------------------------------------------------------------------


def _labels(item: Mapping[str, Any]) -> str:
    labels = item.get("labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or NONE


def _joined(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values) or NONE


def _age(item: Mapping[str, Any]) -> str:
    created = item.get("createTime")
    try:
        then = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    # The largest unit that fits, so ages of one size read alike: 119 s is "1m" beside "2m",
    # not "119s".
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _text(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda item: str(item.get(key) or NONE)


def _names(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda item: _joined(
        entry.get("name") for entry in item.get(key) or [] if isinstance(entry, dict)
    )


def _keys(item: Mapping[str, Any]) -> str:
    return _joined(sorted(item.get("data") or {}))  # keys only: never a value


def _credentials(item: Mapping[str, Any]) -> str:
    """``password``, ``2 certificates``: what a device may connect with (never a secret)."""
    kinds = ["password"] if item.get("password") else []
    count = len(item.get("certificates") or [])
    if count:
        kinds.append(f"{count} certificate{'s' if count != 1 else ''}")
    return _joined(kinds)


def _endpoint(value: Any) -> str:
    """A route's source or target: ``local:devices/+/telemetry``."""
    if not isinstance(value, dict) or not value:
        return NONE
    return _joined(f"{key}:{topic}" for key, topic in sorted(value.items()))


def _function(item: Mapping[str, Any]) -> str:
    function = item.get("function")
    if not isinstance(function, dict):
        return NONE
    return f"{function.get('app')}/{function.get('function')}"


_NAME = Column("NAME", _text("name"))
_TAIL = (
    Column("LABELS", _labels),
    Column("VERSION", _text("version")),
    Column("AGE", _age),
)


def _kind(
    word: str, collection: str, help: str, *columns: Column, read_schema: str = ""
) -> ResourceKind:
    kind = word.capitalize()
    return ResourceKind(
        word=word,
        kind=kind,
        collection=collection,
        read_schema=read_schema or kind,
        write_schema=f"{kind}Write",
        columns=(_NAME, *columns, *_TAIL),
        help=help,
    )


KINDS: dict[str, ResourceKind] = {
    kind.word: kind
    for kind in (
        _kind(
            "node",
            "nodes",
            "edge nodes: the devices that run apps",
            Column("ONLINE", lambda item: "yes" if item.get("online") else "no"),
            Column("APPS", _names("apps")),
        ),
        _kind(
            "app",
            "apps",
            "apps: services deployed to the nodes their selector matches",
            Column("TYPE", lambda item: str(item.get("type") or "container")),
            Column("SELECTOR", _text("selector")),
            Column("SERVICES", _names("services")),
        ),
        _kind(
            "config",
            "configs",
            "configs: files mounted into apps",
            Column("KEYS", _keys),
        ),
        _kind(
            "secret",
            "secrets",
            "secrets: encrypted files mounted into apps",
            # A secret list leaves the data out, so KEYS shows on 'get' only.
            Column("KEYS", _keys, field="data"),
        ),
        _kind(
            "registry",
            "registries",
            "registries: image registries and their credentials",
            Column("ADDRESS", _text("address")),
            Column("USERNAME", _text("username")),
        ),
        _kind(
            "certificate",
            "certificates",
            "certificates: certificates and keys for apps",
            Column("DNS-NAMES", lambda item: _joined(item.get("dnsNames") or [])),
            Column("NOT-AFTER", _text("notAfter")),
        ),
        _kind(
            "device",
            "devices",
            "devices: MQTT clients of a node's broker, their topics and credentials",
            Column("NODE", _text("node")),
            Column("ONLINE", lambda item: "yes" if item.get("online") else "no"),
            Column("CREDENTIALS", _credentials),
        ),
        _kind(
            "route",
            "routes",
            "routes: messages moved by the nodes their selector matches",
            Column("SELECTOR", _text("selector")),
            Column("SOURCE", lambda item: _endpoint(item.get("source"))),
            Column("FUNCTION", _function),
            Column("TARGET", lambda item: _endpoint(item.get("target"))),
        ),
    )
}

# What a mixed file creates first: apps mount configs, secrets and certificates and pull with
# registries, so those go before them; a device names its node, a route its function app.
APPLY_ORDER: tuple[str, ...] = (
    "config", "secret", "registry", "certificate", "node", "device", "app", "route",
)  # fmt: skip


def kind_named(text: str) -> ResourceKind | None:
    """The kind a manifest's ``kind:`` names (``App``, ``app`` or ``apps``), if any."""
    word = text.strip().lower()
    for kind in KINDS.values():
        if word in (kind.word, kind.collection):
            return kind
    return None


@cache
def server_fields(kind: ResourceKind) -> frozenset[str]:
    """The fields the server sets on a read of ``kind`` that a write does not take."""
    from management.schemas import COMPONENTS

    read: dict[str, Any] = COMPONENTS[kind.read_schema]["properties"]
    write: dict[str, Any] = COMPONENTS[kind.write_schema]["properties"]
    return frozenset(
        key
        for key, schema in read.items()
        if key not in write and isinstance(schema, dict) and schema.get("readOnly")
    )


# -- reading files ---------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestFileError(
            f"Cannot read {path} ({exc.strerror or exc}); check the path given to -f."
        ) from None
    except UnicodeDecodeError:
        raise ManifestFileError(f"{path} is not UTF-8 text; give a YAML or JSON file.") from None


def _documents(path: str, text: str) -> list[Any]:
    import yaml

    if path.endswith(".json"):
        try:
            return [json.loads(text)]
        except ValueError as exc:
            raise ManifestFileError(
                f"{path} is not valid JSON ({exc}); fix it and try again."
            ) from None
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "a syntax error"
        raise ManifestFileError(
            f"{path} is not valid YAML{where} ({problem}); fix it and try again."
        ) from None


def _objects(documents: Sequence[Any]) -> list[Any]:
    """Documents flattened to objects: lists and list responses (``{items: [...]}``) opened."""
    objects: list[Any] = []
    for document in documents:
        if document is None:  # an empty document, e.g. after a trailing ---
            continue
        if isinstance(document, list):
            objects.extend(document)
        elif (
            isinstance(document, dict)
            and "name" not in document
            and isinstance(document.get("items"), list)
        ):
            objects.extend(document["items"])
        else:
            objects.append(document)
    return objects


def _manifest(raw: Any, where: str, default: ResourceKind | None) -> Manifest:
    if not isinstance(raw, dict):
        raise ManifestFileError(
            f"{where} is a {type(raw).__name__}, not an object; give each resource as a mapping "
            "with at least a name."
        )
    body = dict(raw)
    text = body.pop("kind", None)
    kinds = ", ".join(kind.kind for kind in KINDS.values())
    if text is None:
        if default is None:
            raise ManifestFileError(f"{where} has no kind; add e.g. 'kind: App' (one of {kinds}).")
        kind = default
    else:
        found = kind_named(str(text))
        if found is None:
            raise ManifestFileError(f"{where} has kind {text!r}; use one of {kinds}.")
        if default is not None and found is not default:
            raise ManifestFileError(
                f"{where} is a {found.kind}, but 'baetyl {default.word}' handles "
                f"{default.collection} only; use 'baetyl apply -f' for a file of several kinds."
            )
        kind = found
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestFileError(f"{where} has no name; give every {kind.word} a 'name:'.")
    for key in server_fields(kind):
        body.pop(key, None)
    return Manifest(kind, body, where)


def load_manifests(path: str, default: ResourceKind | None) -> list[Manifest]:
    """The objects in the YAML or JSON file ``path`` (``-`` for stdin), checked but not sent.

    Objects without a ``kind`` are of kind ``default``; with ``default`` set, another kind is an
    error. Fields the server sets are dropped, so a ``-o yaml`` output can be applied again.
    """
    source = "stdin" if path == "-" else path
    objects = _objects(_documents(path, _read_text(path)))
    if not objects:
        raise ManifestFileError(
            f"{source} holds no objects; give at least one, e.g. 'name: edge-01'."
        )
    manifests = [
        _manifest(raw, f"{source}, object {index}", default)
        for index, raw in enumerate(objects, start=1)
    ]
    seen: dict[str, str] = {}
    for manifest in manifests:
        if manifest.ref in seen:
            raise ManifestFileError(
                f"{manifest.where} repeats {manifest.ref} from {seen[manifest.ref]}; keep one."
            )
        seen[manifest.ref] = manifest.where
    return manifests


# -- output ----------------------------------------------------------------------------------------


@cache
def _dumper() -> type[yaml.SafeDumper]:
    import yaml

    class Dumper(yaml.SafeDumper):
        """YAML with multi-line strings (PEM blocks, config files) as ``|`` blocks."""

    Dumper.add_representer(str, _represent_str)
    return Dumper


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def render_table(kind: ResourceKind, items: Sequence[Mapping[str, Any]]) -> str:
    """Aligned columns, one row per item, header first; never a secret value."""
    columns = [
        column
        for column in kind.columns
        if column.field is None or any(column.field in item for item in items)
    ]
    rows = [[column.header for column in columns]]
    rows += [[" ".join(column.cell(item).split()) for column in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _property_cell(values: Mapping[str, Any], key: str) -> str:
    if key not in values:
        return NONE
    text = json.dumps(values[key], ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 40 else text[:39] + "…"


def render_properties(node: Mapping[str, Any]) -> str:
    """A node's properties, desired beside reported, and the causes of those the agent refused
    ("" when it has none)."""
    desired = node.get("properties") or {}
    report = node.get("report") or {}
    reported = report.get("nodeprops") or {}
    refused = report.get("nodepropsRefused") or {}
    keys = sorted({*desired, *reported, *refused})
    if not keys:
        return ""
    rows = [["PROPERTY", "DESIRED", "REPORTED"]]
    rows += [[key, _property_cell(desired, key), _property_cell(reported, key)] for key in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines += [f"refused {key}: {cause}" for key, cause in sorted(refused.items())]
    return "\n".join(lines)


SYSTEM_APP_PREFIX = "baetyl-"
"""The agent's own apps (the node broker, ``baetyl-broker``): never desired, only reported."""


def app_statuses(node: Mapping[str, Any]) -> list[list[str]]:
    """``[app, version, status, cause]`` for each app the node should run, from what the node
    last reported (``report.appstats``): an app it has not reported yet is Pending, one still
    at another version says so. Then the agent's system apps it reported (the node broker), so
    that one that fails is seen, and the node broker's ``error`` when it cannot even start."""
    report = node.get("report") if isinstance(node.get("report"), dict) else {}
    reported = {
        str(entry.get("name")): entry
        for entry in (report or {}).get("appstats") or []
        if isinstance(entry, dict)
    }
    rows = []
    for app in node.get("apps") or []:
        if not isinstance(app, dict):
            continue
        name, version = str(app.get("name")), str(app.get("version"))
        entry = reported.get(name)
        if entry is None:
            rows.append([name, version, "Pending", "not reported by the node yet"])
            continue
        cause = str(entry.get("cause") or "")
        if str(entry.get("version")) != version:
            cause = f"version {version} not applied yet" + (f"; {cause}" if cause else "")
        rows.append(
            [name, str(entry.get("version")), str(entry.get("status") or "?"), cause or NONE]
        )
    for name, entry in sorted(reported.items()):
        if name.startswith(SYSTEM_APP_PREFIX):
            status, cause = str(entry.get("status") or "?"), str(entry.get("cause") or NONE)
            rows.append([name, str(entry.get("version")), status, cause])
    broker = (report or {}).get("nodebroker")
    if isinstance(broker, dict) and broker.get("error") and "baetyl-broker" not in reported:
        rows.append(["baetyl-broker", NONE, "NotRunning", str(broker["error"])])
    return rows


def render_app_statuses(node: Mapping[str, Any]) -> str:
    """The table of a node's apps with their reported status and its cause ('' if none)."""
    rows = app_statuses(node)
    if not rows:
        return ""
    rows = [["APP", "VERSION", "STATUS", "CAUSE"]] + [
        [" ".join(c.split()) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _epoch(value: Any) -> str:
    """Epoch seconds as an ISO time, or <none> for anything else (it is the node's report)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return NONE
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return NONE


def render_devices(node: Mapping[str, Any]) -> str:
    """A node's devices as it last reported them (``report.devices``): online and since when
    ('' when it reported none)."""
    report = node.get("report") if isinstance(node.get("report"), dict) else {}
    devices = (report or {}).get("devices")
    if not isinstance(devices, dict) or not devices:
        return ""
    rows = [["DEVICE", "ONLINE", "SINCE"]]
    for name, entry in sorted(devices.items()):
        entry = entry if isinstance(entry, dict) else {}
        online = "yes" if entry.get("online") else "no"
        rows.append([" ".join(str(name).split()), online, _epoch(entry.get("since"))])
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _count(value: Any) -> str:
    """A counter of the node's report (0 when it never reported it), or <none> when it is not
    a number."""
    if value is None:
        return "0"
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else NONE


def render_routes(node: Mapping[str, Any]) -> str:
    """A node's routes as it last reported them (``report.routes``): what each forwarded,
    queued, dropped, filtered and failed, and its last error ('' when it reported none).

    A route is in the table once the node runs it, so it is the place to wait for a new one.
    """
    report = node.get("report") if isinstance(node.get("report"), dict) else {}
    routes = (report or {}).get("routes")
    if not isinstance(routes, dict) or not routes:
        return ""
    rows = [["ROUTE", "FORWARDED", "QUEUED", "DROPPED", "FILTERED", "FAILED", "LAST-ERROR"]]
    for name, entry in sorted(routes.items()):
        entry = entry if isinstance(entry, dict) else {}
        counts = [_count(entry.get(key)) for key in ("forwarded", "queued", "dropped")]
        counts += [_count(entry.get(key)) for key in ("filtered", "failed")]
        error = " ".join(str(entry.get("lastError") or NONE).split())
        rows.append([" ".join(str(name).split()), *counts, error])
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join(
        "   ".join([*(c.ljust(w) for c, w in zip(row[:6], widths, strict=True)), row[6]]).rstrip()
        for row in rows
    )


def render(value: Any, output: Literal["json", "yaml"]) -> str:
    """``value`` (the API's JSON) as indented JSON or as YAML."""
    if output == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    import yaml

    text: str = yaml.dump(
        value, Dumper=_dumper(), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return text.rstrip("\n")

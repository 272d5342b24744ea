"""values.schema.json of both charts: draft-07, in step with values.yaml and README."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.deploy.charts import CLOUD, EDGE, EDGE_VALUES, REPLICATED, Values, merged_values

REPLICATED_BASE: dict[str, Any] = {
    "mode": "replicated",
    "replicaCount": 3,
    "database": {"existingSecret": "db"},
    "bus": {"url": "mqtts://emqx:8883", "publicAddress": "mqtt.example.com:8883"},
    "persistence": {"accessModes": ["ReadWriteMany"]},
}


def _validator(chart: Path) -> Draft7Validator:
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _errors(chart: Path, *values: Values) -> list[str]:
    merged = merged_values(chart, *values)
    return [error.message for error in _validator(chart).iter_errors(merged)]


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("chart", [CLOUD, EDGE], ids=["cloud", "edge"])
def test_schema_is_valid_draft7(chart: Path) -> None:
    """The schema itself is valid JSON Schema draft-07, the newest draft every Helm 3 reads."""
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("chart", "values"),
    [(CLOUD, ()), (CLOUD, (REPLICATED,)), (EDGE, ()), (EDGE, (EDGE_VALUES,))],
    ids=["cloud-defaults", "cloud-replicated", "edge-defaults", "edge-test-values"],
)
def test_shipped_values_match_the_schema(chart: Path, values: tuple[Path, ...]) -> None:
    """values.yaml, and the example values files merged over it, satisfy the schema."""
    assert _errors(chart, *values) == []


@pytest.mark.parametrize("chart", [CLOUD, EDGE], ids=["cloud", "edge"])
def test_every_schema_property_has_a_default(chart: Path) -> None:
    """Top-level schema properties and values.yaml keys are the same set: no undocumented knob."""
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    assert set(schema["properties"]) == set(values)


@pytest.mark.parametrize("chart", [CLOUD, EDGE], ids=["cloud", "edge"])
def test_readme_documents_every_value(chart: Path) -> None:
    """Each value of values.yaml is in the chart README's table, by its path or a parent's."""
    readme = (chart / "README.md").read_text(encoding="utf-8")
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))

    def covered(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))

    assert [path for path in _leaves(values) if not covered(path)] == []
    assert sorted(documented - {p for leaf in _leaves(values) for p in _prefixes(leaf)}) == []


def _prefixes(path: str) -> Iterator[str]:
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        yield ".".join(parts[:n])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"replicaCount": 2}, "1 was expected"),
        ({"mode": "cluster"}, "is not one of"),
        ({"api": {"publichost": "typo"}}, "Additional properties"),
        ({"unknownTopLevel": True}, "Additional properties"),
        ({"service": {"public": {"type": "NodePort"}}}, "is not one of"),
        ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "True was expected"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "True was expected"),
        ({"database": {"url": "postgres://db/baetyl"}}, "does not match"),
        ({"config": {"shadow": {"nested": {"no": 1}}}}, "is not valid under any"),
        ({"bus": {"shareGroup": "baetyl"}}, "'shareGroup' was unexpected"),
    ],
    ids=[
        "embedded-replicas",
        "unknown-mode",
        "typo",
        "unknown-key",
        "nodeport",
        "writable-root",
        "root",
        "not-mysql",
        "nested-config",
        "removed-share-group",
    ],
)
def test_cloud_schema_refuses(override: dict[str, Any], fragment: str) -> None:
    """Values that cannot work, or that weaken the pod's security, fail the schema."""
    errors = _errors(CLOUD, override)
    assert any(fragment in error for error in errors), errors


@pytest.mark.parametrize(
    "change",
    [
        {"bus": {"url": ""}},
        {"bus": {"publicAddress": ""}},
        {"database": {"existingSecret": ""}},
        {"persistence": {"accessModes": ["ReadWriteOnce"]}},
        {"persistence": {"enabled": False}},
    ],
    ids=["no-bus-url", "no-public-address", "no-database", "rwo-volume", "no-volume"],
)
def test_replicated_schema_needs_shared_services(change: dict[str, Any]) -> None:
    """Replicated mode needs a broker, MySQL and a ReadWriteMany (or existing) volume."""
    assert _validator(CLOUD).is_valid(merged_values(CLOUD, REPLICATED_BASE))
    assert _errors(CLOUD, REPLICATED_BASE, change) != []


def test_replicated_schema_accepts_an_existing_claim() -> None:
    """An existing claim stands in for ReadWriteMany: its access mode is the owner's business."""
    change = {"persistence": {"accessModes": ["ReadWriteOnce"], "existingClaim": "shared"}}
    assert _errors(CLOUD, REPLICATED_BASE, change) == []


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"activation": {"caSha256": "abc"}}, "does not match"),
        ({"activation": {"url": "http://cloud:9003"}}, "does not match"),
        ({"apps": {"namespace": "Edge_Apps"}}, "does not match"),
        ({"agent": {"engine": "native"}}, "Additional properties"),
    ],
    ids=["short-sha", "plain-http", "bad-namespace", "unknown-key"],
)
def test_edge_schema_refuses(override: dict[str, Any], fragment: str) -> None:
    """The edge chart's schema refuses malformed activation values and unknown keys."""
    errors = _errors(EDGE, EDGE_VALUES, override)
    assert any(fragment in error for error in errors), errors

"""The charts under helm/, rendered by the test-only renderer in tests/deploy/render (Go).

`Renderer` runs the binary the session fixture builds; `merged_values` merges values files the way
Helm does, for the schema checks; the small readers (`find`, `one`, `pod_spec`, ...) pick objects
and fields out of the rendered manifests.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CLOUD",
    "EDGE",
    "EDGE_VALUES",
    "GOPATH",
    "NAMESPACE",
    "RELEASE",
    "REPLICATED",
    "ROOT",
    "Manifest",
    "RenderError",
    "Renderer",
    "Values",
    "build_renderer",
    "containers",
    "env_of",
    "find",
    "merged_values",
    "one",
    "pod_spec",
]

ROOT = Path(__file__).resolve().parents[2]
CLOUD = ROOT / "helm" / "pybaetyl"
EDGE = ROOT / "helm" / "pybaetyl-edge"
REPLICATED = CLOUD / "values-replicated.yaml"
EDGE_VALUES = Path(__file__).with_name("values-edge.yaml")
RENDER_SOURCE = Path(__file__).with_name("render")
# Where Debian's golang-*-dev packages put their sources (sprig, yaml.v3 and their dependencies).
GOPATH = Path("/usr/share/gocode")
RELEASE, NAMESPACE = "demo", "baetyl"

Manifest = dict[str, Any]
Values = Path | Mapping[str, Any]


class RenderError(AssertionError):
    """The renderer failed where the test expected manifests; carries its stderr."""


def build_renderer(go: str, out_dir: Path) -> Path:
    """Build tests/deploy/render into ``out_dir`` offline (GOPATH mode); return the binary."""
    binary = out_dir / "render"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(out_dir / "gocache"),
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    result = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=RENDER_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"building the renderer failed:\n{result.stderr}")
    return binary


@dataclass(frozen=True, slots=True)
class Renderer:
    """Renders a chart with values files and override mappings, as `helm template` would."""

    binary: Path
    workdir: Path

    def manifests(
        self, chart: Path, *values: Values, name: str = RELEASE, namespace: str = NAMESPACE
    ) -> list[Manifest]:
        """Every object the chart renders (hooks included), parsed."""
        result = self._run(chart, values, name=name, namespace=namespace, notes=False)
        if result.returncode != 0:
            raise RenderError(f"rendering {chart.name} failed:\n{result.stderr}")
        documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
        for doc in documents:
            assert isinstance(doc, dict), f"a rendered document is not an object: {doc!r}"
        return documents

    def text(self, chart: Path, *values: Values) -> str:
        """The rendered manifests as text."""
        result = self._run(chart, values, name=RELEASE, namespace=NAMESPACE, notes=False)
        if result.returncode != 0:
            raise RenderError(f"rendering {chart.name} failed:\n{result.stderr}")
        return result.stdout

    def notes(self, chart: Path, *values: Values, upgrade: bool = False) -> str:
        """NOTES.txt, rendered."""
        result = self._run(
            chart, values, name=RELEASE, namespace=NAMESPACE, notes=True, upgrade=upgrade
        )
        if result.returncode != 0:
            raise RenderError(f"rendering {chart.name}'s NOTES.txt failed:\n{result.stderr}")
        return result.stdout

    def failure(self, chart: Path, *values: Values) -> str:
        """The error of a render that must fail."""
        result = self._run(chart, values, name=RELEASE, namespace=NAMESPACE, notes=False)
        assert result.returncode != 0, f"rendering {chart.name} succeeded:\n{result.stdout}"
        return result.stderr

    def _run(
        self,
        chart: Path,
        values: tuple[Values, ...],
        *,
        name: str,
        namespace: str,
        notes: bool,
        upgrade: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), "-chart", str(chart), "-name", name, "-namespace", namespace]
        for item in values:
            command += ["-f", str(self._file(item))]
        if notes:
            command.append("-notes")
        if upgrade:
            command.append("-upgrade")
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def _file(self, values: Values) -> Path:
        if isinstance(values, Path):
            return values
        with tempfile.NamedTemporaryFile(
            "w", dir=self.workdir, suffix=".yaml", delete=False, encoding="utf-8"
        ) as file:
            yaml.safe_dump(dict(values), file)
        return Path(file.name)


def _load(values: Values) -> dict[str, Any]:
    if isinstance(values, Path):
        loaded = yaml.safe_load(values.read_text(encoding="utf-8")) or {}
        assert isinstance(loaded, dict)
        return loaded
    return dict(values)


def _coalesce(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _coalesce(out[key], value)
        else:
            out[key] = value
    return out


def merged_values(chart: Path, *values: Values) -> dict[str, Any]:
    """values.yaml with each layer merged over it as Helm merges -f files (null deletes a key)."""
    merged = _load(chart / "values.yaml")
    for layer in values:
        merged = _coalesce(merged, _load(layer))
    return merged


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    """The objects of ``kind`` (named ``name``, if given)."""
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (named ``name``, if given)."""
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    """The pod spec of a Deployment, DaemonSet or Job."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The init containers, then the containers, of a pod spec."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's environment by name: each entry as rendered (value or valueFrom)."""
    env = {item["name"]: item for item in container.get("env", [])}
    assert len(env) == len(container.get("env", [])), "an environment variable is set twice"
    return env

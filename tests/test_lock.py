"""constraints.txt pins every dependency pyproject.toml names, and every install path uses it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
# Locked ahead of pyproject.toml: another branch adds it (see scripts/lock.sh).
AHEAD = {"prometheus-client"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)(?:\s*;\s*.+)?$")


def _pins() -> dict[str, str]:
    """Package name (canonical) to pinned version, from every requirement line of the lock."""
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt:{number} is not 'name==version [; marker]': {line!r}"
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def _declared() -> set[str]:
    """Every distribution pyproject.toml names: the dependencies and every extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    return {canonicalize_name(Requirement(line).name) for line in lines}


def test_the_lock_pins_every_dependency_pyproject_names() -> None:
    """A dependency added to pyproject.toml without `bash scripts/lock.sh` fails here."""
    missing = _declared() - set(_pins())
    assert not missing, f"constraints.txt lacks {sorted(missing)}: run 'bash scripts/lock.sh'"


def test_the_lock_pins_what_other_branches_add() -> None:
    """The dependencies locked ahead of pyproject.toml are in the lock."""
    assert set(_pins()) >= AHEAD


def test_the_pinned_versions_satisfy_pyproject() -> None:
    """No pin falls outside the range pyproject.toml allows (a hand edit gone wrong)."""
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    for line in lines:
        requirement = Requirement(line)
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (line, version)


def test_every_install_path_uses_the_lock() -> None:
    """scripts/test.sh (and so .ci/run) and the Dockerfile install with -c constraints.txt."""
    assert "-c constraints.txt" in (ROOT / "scripts" / "test.sh").read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY [^\n]*constraints\.txt", dockerfile, re.M)
    assert re.search(r"^RUN pip wheel [^\n]*-c constraints\.txt", dockerfile, re.M)
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()

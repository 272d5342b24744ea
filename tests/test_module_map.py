"""ARCHITECTURE.md names every module of the five packages, so its tables stay a true map.

A module added without its line in the package's section (or renamed, or moved) fails here. A
package's ``__init__.py`` is the package itself, which the table at the top describes; every other
``.py`` file must be named in its package's section (``## ... (`<package>/`)``), by its path inside
the package (``api/app.py``), or by its file name in the row of its sub-package (``| `cli/` |``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("certs", "broker", "shadow", "management", "edge")
SECTION = re.compile(r"^## .*\(`([a-z]+)/`\)\s*$", re.M)
SUBPACKAGE_ROW = re.compile(r"^\| `([a-z_]+)/` \|(.*)$", re.M)
MODULE = re.compile(r"`([A-Za-z0-9_/]+\.py)`")


def _sections() -> dict[str, str]:
    """Each package's section of ARCHITECTURE.md: from its heading to the next ``## ``."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for match in SECTION.finditer(text):
        end = text.find("\n## ", match.end())
        found[match.group(1)] = text[match.end() : None if end < 0 else end]
    return found


def named(section: str) -> set[str]:
    """The module paths a section names, relative to its package."""
    names: set[str] = set()
    for sub, row in SUBPACKAGE_ROW.findall(section):
        names.update(f"{sub}/{name}" for name in MODULE.findall(row))
    return names | set(MODULE.findall(SUBPACKAGE_ROW.sub("", section)))


def modules(package: str) -> set[str]:
    return {
        str(path.relative_to(ROOT / package))
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    }


def test_named_reads_paths_and_subpackage_rows() -> None:
    section = "| `tls.py` | x |\n| `cli/` | the command: `client.py`, `pipes.py` |\n`api/app.py`"
    assert named(section) == {"tls.py", "cli/client.py", "cli/pipes.py", "api/app.py"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_named_in_its_package_section(package: str) -> None:
    sections = _sections()
    assert package in sections, f"ARCHITECTURE.md has no section headed '## ... (`{package}/`)'."
    missing = sorted(modules(package) - named(sections[package]))
    assert missing == [], f"ARCHITECTURE.md's {package}/ section does not name {missing}."

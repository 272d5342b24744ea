"""The packages depend on each other in one direction only (see ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("certs", "broker", "shadow", "management", "edge")
# What each package may import from the others. The edge may use only shadow's pure top level
# (document, codecs, topics, envelopes), never shadow.server.
ALLOWED: dict[str, set[str]] = {
    "certs": set(),
    "broker": {"certs"},
    "shadow": {"certs", "broker"},
    "management": {"certs", "broker", "shadow", "edge"},
    "edge": set(),
}
EDGE_MAY_IMPORT: set[str] = {"shadow"}
# Sub-packages that are a public API of their own, importable from other packages.
PUBLIC_SUBPACKAGES = {"shadow.server"}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    """No module imports a package that sits above its own in the dependency order."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _internal_imports(path):
            top = module.split(".")[0]
            if top == package:
                continue
            allowed = top in ALLOWED[package] or (package == "edge" and module in EDGE_MAY_IMPORT)
            if not allowed:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_other_packages_use_only_public_api() -> None:
    """Outside its own package, a package is imported through its __init__ (or its cli group)."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in _internal_imports(path):
                parts = module.split(".")
                if (
                    parts[0] != package
                    and len(parts) > 1
                    and parts[1] != "cli"
                    and module not in PUBLIC_SUBPACKAGES
                ):
                    offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_shadow_top_level_is_pure() -> None:
    """Importing ``shadow`` (what the edge does) loads no ORM, database driver or broker code."""
    code = (
        "import sys, shadow; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tortoise', 'aiomysql', 'aiosqlite', 'amqtt', 'broker', 'certs', 'management') "
        "or m.startswith('shadow.server')]; "
        "print(','.join(sorted(bad)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == ""

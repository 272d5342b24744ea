"""The skip-or-fail rule for missing services: one helper, any truthy ``CI`` fails the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.ci import missing, under_ci
from tests.support.tools import require_tool

TESTS = Path(__file__).resolve().parents[1]
ABSENT = "pybaetyl-no-such-tool"


@pytest.mark.parametrize("value", ["true", "True", "TRUE", "1", "yes", "on", "github-actions"])
def test_any_truthy_ci_counts_as_ci(value: str) -> None:
    """``CI=True`` and the like mean CI, not only the lower-case ``true``."""
    assert under_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "OFF", " "])
def test_unset_empty_or_false_ci_is_a_workstation(value: str) -> None:
    """Only the usual spellings of false, or nothing, mean a workstation."""
    assert not under_ci({"CI": value})
    assert not under_ci({})


def test_missing_fails_under_ci_and_skips_elsewhere() -> None:
    """The same message is a failure under CI and a skip on a workstation."""
    with pytest.raises(pytest.fail.Exception, match="MariaDB is gone"):
        missing("MariaDB is gone.", {"CI": "True"})
    with pytest.raises(pytest.skip.Exception, match="MariaDB is gone"):
        missing("MariaDB is gone.", {})


def test_a_missing_tool_fails_with_ci_capitalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CI=True`` (how some CI systems spell it) turns a missing program into a failure."""
    monkeypatch.setenv("CI", "True")
    with pytest.raises(pytest.fail.Exception, match=ABSENT):
        require_tool(ABSENT)
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match=ABSENT):
        require_tool(ABSENT)


def test_no_other_test_module_reads_ci() -> None:
    """The rule lives in one place: no test file but tests/support/ci.py looks at ``CI``."""
    reads_ci = re.compile(r"""environ(?:\.get)?\s*[\[(]\s*["']CI["']|getenv\(\s*["']CI["']""")
    offenders = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if path.name != "ci.py" and reads_ci.search(path.read_text())
    ]
    assert offenders == [], f"use tests.support.ci.missing instead of reading CI in {offenders}"

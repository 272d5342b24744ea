"""The guards of tests/conftest.py are real: a pytest run whose tests leak processes fails,
names them, and kills them."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

INNER_CONFTEST = """
from tests.conftest import _no_process_outlives_its_test, _no_process_outlives_the_run
"""

INNER_TESTS = """
import subprocess, sys
from pathlib import Path

def test_leaks_an_app(tmp_path: Path) -> None:
    # like a native app: a session of its own, working in the test's directory
    subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True)

def test_leaks_a_child() -> None:
    # no tmp_path at all: only the end of the run sees it, as pytest's descendant
    sys.modules["leaked"] = subprocess.Popen(["sleep", "301"], cwd="/")  # kept referenced

def test_clean(tmp_path: Path) -> None:
    subprocess.run(["true"], cwd=tmp_path, check=True)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_leaking_run_fails_naming_the_processes_and_kills_them(
    pytester: pytest.Pytester,
) -> None:
    """A test leaving an app in its tmp_path errors at teardown; a child of pytest left at the
    end fails the run; both are listed with their pids, then gone; a clean test passes."""
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "ignore::ResourceWarning",
        "--rootdir", str(pytester.path), "-o", f"pythonpath={ROOT}",
    )  # fmt: skip
    output = result.stdout.str()
    assert result.ret != 0, output
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 3, output  # the tests themselves pass ...
    assert outcomes.get("errors") == 2, output  # ... the guards fail their teardown
    assert "test_inner.py::test_leaks_an_app left 1 process(es) running (killed now)" in output
    assert "The test run (base temporary directory " in output
    # Each pid shows in its error and again in the short summary when pytest runs with -ra.
    pids = sorted({int(pid) for pid in re.findall(r"pid (\d+): sleep 30[01]", output)})
    assert len(pids) == 2, output
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:  # never leave them, even if the guard failed to
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the guard did not kill process {pid}")

"""The docs stand alone: every file they link or name is in the repository, every figure is traced.

A reader of the project has only the repository: a doc that cites a file the repository lacks
(a design note, a reference kept elsewhere) or a benchmark figure whose data cannot be found is
a dead end. These checks run with the tests, so a rename or a new figure cannot leave one.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from bench.report import MAX_SAMPLES, publish, summary

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    "README.md",
    "ARCHITECTURE.md",
    "PROTOCOL.md",
    "CHANGELOG.md",
    "broker/README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.md")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "helm").glob("*/README.md")),
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TICKED = re.compile(r"`([^`\s]+)`")
LINES = re.compile(r":\d+(?:-\d+)?$")  # broker/core.py:402-403 names broker/core.py
PLACEHOLDER = re.compile(r"[<>*{}…]")
# Written by the benchmarks on the machine that ran them; ignored by git (see bench/README.md).
OUTPUT_DIR = "bench/results/"
NOT_KEPT = "Raw data not kept"
RUN_SECTION = re.compile(r"^(##|###) (20\d\d-\d\d-\d\d|20\d{6}T\d{6}Z)\b.*$", re.M)
PUBLISHED = re.compile(r"`(bench/published/[A-Za-z0-9_.-]+\.json)`")


def _tracked() -> list[str]:
    """Every file git tracks (what a clone of the repository holds)."""
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def _top_level() -> set[str]:
    return {path.split("/")[0] for path in _tracked()}


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves(doc: str) -> None:
    """A Markdown link to a file ([text](path), not a URL) points at a file that exists."""
    path = ROOT / doc
    broken = [
        target
        for target in LINK.findall(path.read_text(encoding="utf-8"))
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target)
        and not (path.parent / target.split("#")[0]).exists()
    ]
    assert broken == [], f"{doc} links to files that do not exist: {broken}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_repository_path_exists(doc: str) -> None:
    """A path in backticks that starts at the repository root (`broker/tls.py`) exists."""
    roots = _top_level()
    missing = []
    for token in TICKED.findall((ROOT / doc).read_text(encoding="utf-8")):
        name = LINES.sub("", token)
        first = name.split("/")[0]
        if first not in roots or PLACEHOLDER.search(name) or name.startswith(OUTPUT_DIR):
            continue
        if "/" not in name and not (ROOT / name).is_file():
            continue  # a bare word that happens to match a directory name, e.g. `bench`
        if not (ROOT / name).exists():
            missing.append(token)
    assert missing == [], f"{doc} names paths the repository does not have: {missing}"


def test_no_file_cites_a_doc_the_repository_lacks() -> None:
    """No tracked file names an upper-case Markdown doc (like ARCHITECTURE.md) that is not in
    the repository: notes kept outside it are not there for its readers."""
    have = {Path(path).name for path in _tracked() if path.endswith(".md")}
    cited: dict[str, list[str]] = {}
    for path in _tracked():
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name in set(re.findall(r"\b[A-Z][A-Z_]*\.md\b", text)) - have:
            cited.setdefault(name, []).append(path)
    assert cited == {}, f"docs cited but not in the repository: {cited}"


@pytest.mark.parametrize("doc", ["bench/RESULTS.md", "bench/FAULTS.md"])
def test_every_published_run_names_its_summary_or_says_it_is_gone(doc: str) -> None:
    """Each run section either names a summary in bench/published/ that exists and parses, or
    says its raw data was not kept: a figure can always be traced, or is marked as untraceable."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    starts = [m.start() for m in RUN_SECTION.finditer(text)]
    assert starts, f"{doc} has no run sections: has the heading format changed?"
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        section = text[start:end]
        heading = section.splitlines()[0]
        names = PUBLISHED.findall(section)
        assert names or NOT_KEPT in section, (
            f"{doc}: '{heading}' names no bench/published/ summary and does not say '{NOT_KEPT}'"
        )
        for name in names:
            path = ROOT / name
            assert path.is_file(), f"{doc}: '{heading}' names {name}, which does not exist"
            document = json.loads(path.read_text(encoding="utf-8"))
            assert {"date", "command"} <= set(document), f"{name} is not a run's summary"


def test_every_published_summary_is_named_by_a_doc() -> None:
    """A summary nobody names is a figure nobody can find: each is cited by RESULTS or FAULTS."""
    cited = "".join((ROOT / doc).read_text(encoding="utf-8") for doc in DOCS)
    orphans = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "bench" / "published").glob("*.json"))
        if str(path.relative_to(ROOT)) not in cited
    ]
    assert orphans == []


def test_a_published_summary_keeps_figures_and_drops_samples(tmp_path: Path) -> None:
    """The summary is the run's JSON minus bulk samples, and parses back."""
    samples = list(range(MAX_SAMPLES + 1))
    document = {
        "date": "20261207T120000Z",
        "command": "python -m bench.shadow_fleet --nodes 10",
        "runs": [{"db": "sqlite", "fanout_s": [1.1, 1.2, 1.3], "latencies_ms": samples}],
    }
    path = publish(document, "shadow_fleet-20261207T120000Z.json", tmp_path)
    back = json.loads(path.read_text(encoding="utf-8"))
    assert back["runs"][0]["fanout_s"] == [1.1, 1.2, 1.3]
    assert back["runs"][0]["latencies_ms"] == {"omitted_samples": MAX_SAMPLES + 1}
    assert back["command"] == document["command"]
    assert back["raw"].startswith("bench/results/shadow_fleet-20261207T120000Z.json")
    assert summary(samples[:MAX_SAMPLES]) == samples[:MAX_SAMPLES]
    with pytest.raises(ValueError, match="not a run's JSON"):
        publish(document, "../escape.json", tmp_path)

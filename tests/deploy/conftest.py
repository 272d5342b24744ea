"""The renderer the deployment tests use: tests/deploy/render, built once per session."""

from __future__ import annotations

import shutil
from typing import NoReturn

import pytest

from tests.deploy.charts import GOPATH, Renderer, build_renderer
from tests.support.ci import missing

_INSTALL = (
    "install them with 'apt-get install golang-go golang-github-masterminds-sprig-dev "
    "golang-gopkg-yaml.v3-dev' (.ci/run does)"
)


def _missing(what: str) -> NoReturn:
    """Under CI a missing build tool fails the tests; elsewhere it skips them, saying why."""
    missing(f"{what}; the chart tests render with a small Go program: {_INSTALL}.")


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Renderer:
    """The test-only chart renderer, built in a temporary directory (nothing cached in the repo)."""
    go = shutil.which("go")
    if go is None:
        _missing("go is not installed")
    for package in ("github.com/Masterminds/sprig", "gopkg.in/yaml.v3"):
        if not (GOPATH / "src" / package).is_dir():
            _missing(f"the Go package {package} is not in {GOPATH}")
    build = tmp_path_factory.mktemp("render")
    work = tmp_path_factory.mktemp("values")
    return Renderer(build_renderer(go, build), work)

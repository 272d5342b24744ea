"""Property-based tests of the management API against its own OpenAPI document (schemathesis).

For every operation of the document (the one ``/v1/openapi.json`` serves), schemathesis sends the
document's examples, valid requests and invalid ones to a live cloud on SQLite, with a bearer
token for namespace ``default``, and checks each answer: no 5xx, a status code the document
lists, the content type it lists, and a body that fits the schema it gives. The cloud runs in a
thread with its own event loop, because schemathesis sends its requests synchronously from the
test. The run is bounded (``MAX_EXAMPLES`` per operation, derandomized, no example database) to
take about 30 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from management.api import openapi
from management.bootstrap import ensure_pki
from management.cloud import Cloud
from tests.support.cloud import RunningCloud, cloud_settings
from tests.support.db import Database

Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]

MAX_EXAMPLES = 20  # per operation
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True, slots=True)
class LiveApi:
    """The address of a running management API and a token for namespace ``default``."""

    url: str
    token: str


@contextlib.contextmanager
def cloud_in_thread(data_dir: Path) -> Iterator[LiveApi]:
    """Run the whole cloud on SQLite in a thread with its own loop until the block ends."""
    database = Database("sqlite", f"sqlite://{data_dir / 'baetyl.db'}", path=data_dir / "baetyl.db")
    config = cloud_settings(data_dir / "data", database.url)
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event, LiveApi]]
    started = concurrent.futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        ca, files = ensure_pki(config)
        async with Cloud(config, ca, files) as cloud:
            running = RunningCloud(cloud, config, ca, database)
            live = LiveApi(running.api_url, await running.token("default"))
            started.set_result((asyncio.get_running_loop(), stop, live))
            await stop.wait()

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            failure.append(exc)
            if not started.done():
                started.set_exception(exc)

    thread = threading.Thread(target=run, name="cloud", daemon=True)
    thread.start()
    loop, stop, live = started.result(timeout=60)
    try:
        yield live
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        assert not thread.is_alive(), "The cloud did not stop within 30 s."
        if failure:
            raise failure[0]


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The cloud on a fresh SQLite database, serving in a background thread."""
    with cloud_in_thread(tmp_path_factory.mktemp("schemathesis")) as live:
        yield live


@pytest.fixture(scope="module")
def http(live_api: LiveApi) -> Iterator[requests.Session]:
    """One HTTP session sending the bearer token, reused by every generated request."""
    with requests.Session() as session:
        # Generated cases that set their own (invalid) Authorization header override this one.
        session.headers["Authorization"] = f"Bearer {live_api.token}"
        yield session


def operations(schema: schemathesis.BaseSchema) -> list[Operation]:
    """Every operation of ``schema``; a part schemathesis cannot read fails collection."""
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        found.append(result.ok())
    return found


# Built at collection from the code (no server needed); the first test checks that the live API
# serves exactly this document. The operations are parametrized here rather than with
# ``schema.parametrize()``: under pytest 9.2 that plugin gives every operation the same node id
# (and its lazy ``from_fixture`` loader sets ``Node._nodeid``, which pytest 9.2 removed).
SCHEMA = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = operations(SCHEMA)


def requests_for(operation: Operation) -> SearchStrategy[Case]:
    """The document's own examples first, then valid and invalid requests for ``operation``."""
    return st.one_of(
        *operation.get_strategies_from_examples(),
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )


def test_served_document_is_the_one_tested(live_api: LiveApi) -> None:
    """The live ``/v1/openapi.json`` is the document the property tests are generated from."""
    response = requests.get(f"{live_api.url}/v1/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == openapi.document()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_api_conforms_to_its_document(
    operation: Operation, http: requests.Session, live_api: LiveApi
) -> None:
    """Every generated request gets no 5xx and an answer the OpenAPI document allows."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=requests_for(operation))
    def call(case: Case) -> None:
        case.call_and_validate(base_url=live_api.url, session=http, checks=CHECKS)

    call()

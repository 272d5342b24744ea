"""Hostile bodies on the management API's write routes.

tests/management/test_api_schemathesis.py already sends every operation schema-derived valid
and invalid requests and checks that none is answered 5xx and that every answer fits the
document. What it cannot send or see is here: bodies that are not JSON at all or JSON the
schema generator never makes (NaN, lone surrogates, huge numbers, deep nesting), mutations of
real valid bodies, and the store behind the API: a refused write must leave the database
exactly as it was, and an accepted one must stay readable (strict JSON, its GET and its list).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.livecloud import LiveCloud, sqlite_query
from tests.faults.strategies import FUZZING, json_values
from tests.management.api_samples import COLLECTIONS, sample

MAX_EXAMPLES = FUZZING.max_examples
REFUSALS = {400, 404, 409, 413}
BATCH = {
    "name": "order",
    "labels": {"site": "paris"},
    "fingerprintKind": "serialNumber",
    "quota": 3,
}
SEEDED = {"nodes": "gw", "apps": "web", "configs": "base", "secrets": "s", "registries": "r"}

# (method, path, a valid body for it)
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    *(("POST", f"/{collection}", sample(collection, "fz")) for collection in COLLECTIONS),
    ("POST", "/batches", BATCH),
    *(("PUT", f"/{c}/{name}", sample(c, name)) for c, name in SEEDED.items()),
    ("PUT", "/nodes/gw/properties", {"desire": {"interval": 5}}),
]

VALUES = json_values(st.integers(-(2**70), 2**70))
# JSON text Python's json module reads but the JSON standard does not allow, or that strains a
# store: NaN and infinities, a lone surrogate, a 400-digit number, nesting 5,000 deep.
ODD_JSON = [
    "NaN",
    "-Infinity",
    '"\\ud800"',
    "1" + "0" * 400,
    "[" * 5000 + "]" * 5000,
    '{"a": {"b": NaN}}',
]


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any]) -> bytes:
    """A valid ``body`` with one field changed, added or dropped, possibly to odd JSON."""
    body = json.loads(json.dumps(body))
    field = draw(st.sampled_from(sorted(body)))
    how = draw(st.sampled_from(["none", "replace", "add", "drop", "odd", "nest", "label"]))
    if how == "replace":
        body[field] = draw(VALUES)
    elif how == "add":
        body[draw(st.text(min_size=1, max_size=8))] = draw(VALUES)
    elif how == "drop":
        del body[field]
    elif how == "nest":
        value: Any = draw(VALUES)
        for _ in range(draw(st.integers(10, 60))):
            value = {"n": value}
        body[field] = value
    elif how == "label":
        body["labels"] = draw(
            st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=3)
        )
    if how == "odd":
        marker = "__odd__"
        body[field] = marker
        return json.dumps(body).replace(f'"{marker}"', draw(st.sampled_from(ODD_JSON))).encode()
    return json.dumps(body).encode()


@st.composite
def writes(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    """(method, path, body, headers) for one write route."""
    method, path, valid = draw(st.sampled_from(ROUTES))
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "odd", "bytes"]))
    if kind == "mutated":
        body = draw(mutated(valid))
    elif kind == "json":
        body = json.dumps(draw(VALUES)).encode()
    elif kind == "odd":
        body = draw(st.sampled_from(ODD_JSON)).encode()
    else:
        body = draw(st.binary(max_size=200))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain"]))}
    if method == "PUT" and draw(st.booleans()):
        headers["If-Match"] = draw(st.sampled_from(['"1"', '"2"', "*", 'W/"1"', "x", "²"]))
    return method, path, body, headers


def examples_of_odd_json(test: Any) -> Any:
    """Each odd JSON text inside an otherwise valid config, always tried first."""
    headers = {"Content-Type": "application/json"}
    for odd in ODD_JSON:
        body = f'{{"name": "odd", "data": {{"a.txt": {odd}}}}}'.encode()
        test = example(write=("POST", "/configs", body, headers))(test)
    for method, path, body in (
        ("POST", "/configs", b'{"name": "odd", "labels": {"\\udc00": "x"}, "data": {}}'),
        ("PUT", "/nodes/gw/properties", b'{"desire": {"x": NaN}}'),
        ("PUT", "/nodes/gw/properties", b'{"desire": {"\\ud800": 1}}'),
    ):
        test = example(write=(method, path, body, headers))(test)
    return test


def strict_json(text: str) -> Any:
    """``text`` parsed as standard JSON (NaN and infinities refused)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCloud]:
    """``baetyl up`` on SQLite with one resource of each updatable kind."""
    workdir = tmp_path_factory.mktemp("hostile-api")
    db = workdir / "baetyl-data" / "baetyl.db"
    with LiveCloud(workdir, f"sqlite://{db}", sqlite_query(db)) as live:
        for collection, name in SEEDED.items():
            answer = live.call("POST", f"/{collection}", sample(collection, name))
            assert answer.status == 201, answer.body
        yield live


def snapshot(cloud: LiveCloud) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every resource row and every desired state, as stored."""
    resources = cloud.query(
        "SELECT namespace, kind, name, version, labels, body FROM resources "
        "ORDER BY namespace, kind, name",
        (),
    )
    shadows = cloud.query("SELECT node_id, desired_version, desired FROM shadows ORDER BY 1", ())
    return resources, shadows


def test_hostile_bodies_on_write_routes_are_refused_and_change_nothing(
    cloud: LiveCloud, record_property: Any
) -> None:
    """Random, odd and mutated bodies on every write route: never a 5xx, a refusal is a
    documented 4xx error body and leaves the store as it was, and whatever is accepted is
    strict JSON and readable afterwards, alone and in its list."""
    statuses: collections.Counter[int] = collections.Counter()

    @FUZZING
    @given(write=writes())
    @examples_of_odd_json
    def send(write: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = write
        before = snapshot(cloud)
        response = cloud.http.request(
            method, f"{cloud.api_url}/v1{path}", data=body, headers=headers, timeout=30
        )
        statuses[response.status_code] += 1
        what = (method, path, body[:300], response.status_code, response.text[:300])
        assert response.status_code < 500, what
        answer = strict_json(response.text) if response.content else None
        if response.status_code >= 400:
            assert response.status_code in REFUSALS, what
            assert isinstance(answer, dict), what
            assert {"code", "message", "requestId"} <= set(answer), what
            assert snapshot(cloud) == before, what
            return
        assert isinstance(answer, dict), what
        collection = path.split("/")[1]
        name = path.split("/")[2] if method == "PUT" else answer["name"]
        for read in (f"/{collection}/{name}", f"/{collection}"):
            got = cloud.call("GET", read)
            assert got.status == 200, (what, read, got.body)
        if method == "POST":  # leave the name free for the next example
            assert cloud.call("DELETE", f"/{collection}/{name}").status == 204

    send()
    figures = {
        "scenario": "hostile-api-bodies",
        "requests": sum(statuses.values()),
        "by_status": dict(sorted(statuses.items())),
    }
    record_property("figures", figures)
    print(f"faults hostile-api-bodies: {json.dumps(figures)}")
    assert cloud.alive
    assert sum(n for status, n in statuses.items() if status >= 400) > MAX_EXAMPLES // 2

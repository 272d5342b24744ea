"""Node properties on the node (``edge.properties``): the agent's own applied and reported,
the apps' validated, kept and reported, and the local endpoint that serves them."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from edge.agent import AgentConfig
from edge.errors import EdgeError
from edge.functions import FunctionProxy
from edge.properties import (
    KEEPALIVE,
    MAX_BODY,
    REFUSED,
    REPORTED,
    NodeProperties,
    PropertyError,
    is_loopback,
    property_routes,
)
from edge.reports import ReportQueue
from management.cli import main
from shadow import JSONObject, merge


class Reports:
    """The report sink: every patch put, and the state they make applied in order."""

    def __init__(self) -> None:
        self.patches: list[JSONObject] = []
        self.queue = ReportQueue()

    def put(self, patch: JSONObject) -> None:
        self.patches.append(json.loads(json.dumps(patch)))
        self.queue.put(patch)

    def state(self) -> JSONObject:
        state: JSONObject = {}
        for patch in self.patches:
            state = merge(state, patch)
        return state


def make(path: Path, reports: Reports, *, activation: str = "a1") -> NodeProperties:
    return NodeProperties(
        path / "properties.json", activation=activation, default_keepalive=30, report=reports.put
    )


def test_a_desired_keepalive_is_applied_and_reported(tmp_path: Path) -> None:
    """A valid baetyl.keepalive becomes the keepalive in effect and is reported under its key;
    removing it goes back to the default, reported too."""
    reports = Reports()
    props = make(tmp_path, reports)
    assert props.keepalive == 30
    props.desire({"region": "eu", KEEPALIVE: 12})
    assert props.keepalive == 12
    assert reports.patches == [{REPORTED: {KEEPALIVE: 12}}]
    assert props.view() == {
        "desire": {"region": "eu", KEEPALIVE: 12},
        "report": {KEEPALIVE: 12},
        "refused": {},
    }
    props.desire({"region": "eu", KEEPALIVE: 12})  # the same again: nothing to report
    assert len(reports.patches) == 1
    props.desire({"region": "eu"})
    assert props.keepalive == 30
    assert reports.state() == {REPORTED: {KEEPALIVE: 30}}


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        (3, "from 5 to 600 seconds, not 3"),
        (601, "from 5 to 600 seconds, not 601"),
        ("30", 'not "30"'),
        (True, "not true"),
        (7.5, "not 7.5"),
        ({"s": 30}, "whole number of seconds"),
    ],
)
def test_an_invalid_keepalive_is_refused_with_its_cause_and_not_applied(
    tmp_path: Path, value: Any, cause: str
) -> None:
    """The keepalive in effect stays; the cause is reported under nodepropsRefused, and goes
    away (null) once a valid value is desired."""
    reports = Reports()
    props = make(tmp_path, reports)
    props.desire({KEEPALIVE: 20})
    props.desire({KEEPALIVE: value})
    assert props.keepalive == 20
    assert cause in props.refused[KEEPALIVE]
    assert reports.state()[REFUSED] == props.refused
    props.desire({KEEPALIVE: 10.0})  # a whole number written as a float is fine
    assert props.keepalive == 10
    assert props.refused == {}
    assert reports.state() == {REPORTED: {KEEPALIVE: 10}}


def test_an_unknown_agent_property_is_refused(tmp_path: Path) -> None:
    """A desired key under baetyl. that the agent does not know (a typo) is refused by name."""
    reports = Reports()
    props = make(tmp_path, reports)
    props.desire({"baetyl.keepalve": 10})
    assert "baetyl.keepalve is not a property the agent knows" in props.refused["baetyl.keepalve"]
    assert props.keepalive == 30


def test_apps_report_properties_as_a_merge_patch_kept_in_a_private_file(tmp_path: Path) -> None:
    """A patch merges into the reported properties (null deletes), is reported as it is, and
    is kept in properties.json (0600), which a restarted agent reads back."""
    reports = Reports()
    props = make(tmp_path, reports)
    view = props.update({"temp": 21.5, "fw": {"version": "1.2", "ok": True}})
    assert view["report"] == {"temp": 21.5, "fw": {"version": "1.2", "ok": True}, KEEPALIVE: 30}
    props.update({"temp": None, "fw": {"ok": False}})
    assert props.reported == {"fw": {"version": "1.2", "ok": False}, KEEPALIVE: 30}
    assert reports.state() == {REPORTED: {"fw": {"version": "1.2", "ok": False}}}
    props.update({"fw": {"ok": False}})  # nothing changes: nothing is reported
    assert len(reports.patches) == 2
    file = tmp_path / "properties.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    again = make(tmp_path, Reports())
    assert again.reported == props.reported
    assert again.full_patch() == {REPORTED: props.reported, REFUSED: None}


def test_a_node_activated_again_forgets_what_apps_reported(tmp_path: Path) -> None:
    """The kept properties belong to one activation; another one starts with none."""
    make(tmp_path, Reports()).update({"temp": 1})
    assert make(tmp_path, Reports(), activation="a2").reported == {KEEPALIVE: 30}


def test_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    """A properties.json that is not JSON, or not ours, is ignored rather than fatal."""
    for text in ("{", "[]", '{"format": 1, "activation": "a1", "reported": 5}'):
        (tmp_path / "properties.json").write_text(text)
        assert make(tmp_path, Reports()).reported == {KEEPALIVE: 30}


@pytest.mark.parametrize(
    ("patch", "status", "says"),
    [
        ([1], 400, "must be a JSON object"),
        ({KEEPALIVE: 5}, 403, "are the agent's"),
        ({"": 1}, 400, "empty"),
        ({"$x": 1}, 400, "$"),
        ({"k" * 129: 1}, 400, "128"),
        ({"a": {"b": {"c": {"d": {"e": 1}}}}}, 400, "deep"),
        ({"a": math.nan}, 400, "is nan"),
        ({"big": "x" * 17000}, 413, "16384"),
        ({f"p{i}": i for i in range(257)}, 400, "at most 256"),
    ],
)
def test_an_invalid_update_is_refused_and_changes_nothing(
    tmp_path: Path, patch: Any, status: int, says: str
) -> None:
    """Wrong types, reserved or bad keys, too deep, too large, too many: refused with a
    status and a message saying what is wrong; nothing is kept or reported."""
    reports = Reports()
    props = make(tmp_path, reports)
    props.update({"keep": 1})
    with pytest.raises(PropertyError) as caught:
        props.update(patch)
    assert caught.value.status == status
    assert says in caught.value.message
    assert props.reported == {"keep": 1, KEEPALIVE: 30}
    assert len(reports.patches) == 1


def test_only_loopback_callers_are_served() -> None:
    """The endpoint answers programs on the node only: loopback addresses, v4 or v6."""
    for address in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    for other in ("10.0.0.7", "192.0.2.10", "fe80::1", "::ffff:10.0.0.7", None, "x"):
        assert not is_loopback(other), other


async def test_a_caller_from_another_machine_is_refused(tmp_path: Path) -> None:
    """Were the endpoint bound to a network address, a remote caller would get 403."""
    props = make(tmp_path, Reports())
    get = property_routes(props)[0].handler
    request = make_mocked_request("GET", "/node/properties")
    request = request.clone(remote="192.0.2.10")
    answer = await get(request)
    assert answer.status == 403
    assert b"Only programs on this node" in answer.body  # type: ignore[attr-defined]


class NoFunctions:
    def function_endpoint(self, app: str, function: str) -> tuple[str, int] | None:
        raise LookupError(app)


async def test_the_local_endpoint_reads_and_reports_properties(tmp_path: Path) -> None:
    """GET and PATCH /node/properties on the function proxy's address; errors are JSON with
    a code and a message; POST still calls a function (an app may be called "node")."""
    reports = Reports()
    props = make(tmp_path, reports)
    props.desire({"region": "eu"})
    async with (
        FunctionProxy(NoFunctions(), port=0, routes=lambda: property_routes(props)) as proxy,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{proxy.port}/node/properties"
        async with http.get(url) as answer:
            assert answer.status == 200
            assert await answer.json() == props.view()
        # curl -X PATCH -d '...' sends a form content type: the body is read as JSON anyway.
        async with http.patch(url, data=b'{"temp": 20}') as answer:
            assert answer.status == 200
            assert (await answer.json())["report"] == {"temp": 20, KEEPALIVE: 30}
        for body, status, code in (
            (b"{nope", 400, "InvalidProperties"),
            (b'{"a": NaN}', 400, "InvalidProperties"),
            (b'"text"', 400, "InvalidProperties"),
            (b'{"baetyl.keepalive": 5}', 403, "ReservedProperty"),
            (json.dumps({"x": "y" * MAX_BODY}).encode(), 413, "TooLarge"),
        ):
            async with http.patch(url, data=body) as answer:
                assert answer.status == status, body[:40]
                error = await answer.json()
                assert error["code"] == code, error
                assert error["message"].endswith("."), error

        async def chunks() -> Any:  # no Content-Length: the cap is counted while reading
            for _ in range(3):
                yield b" " * (MAX_BODY // 2)

        async with http.patch(url, data=chunks()) as answer:
            assert answer.status == 413
        async with http.post(url, data=b"{}") as answer:
            assert answer.status == 404
            assert (await answer.json())["code"] == "UnknownFunction"
        async with http.put(url, data=b"{}") as answer:
            assert answer.status == 405
    assert reports.state() == {REPORTED: {"temp": 20}}


@pytest.mark.parametrize("value", [4, 601, "30", 30.0, True])
def test_the_agents_default_keepalive_is_checked(tmp_path: Path, value: Any) -> None:
    """AgentConfig refuses a default keepalive the agent could not use, naming the range."""
    with pytest.raises(EdgeError, match="from 5 to 600"):
        AgentConfig(tmp_path, keepalive=value)


@pytest.mark.parametrize("text", ["4", "601", "7.5", "x", "-5"])
def test_baetyl_edge_run_refuses_a_keepalive_out_of_range(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--keepalive takes whole seconds from 5 to 600; anything else is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["edge", "run", "--keepalive", text])
    assert exited.value.code == 2
    assert "is not a whole number of seconds from 5 to 600" in capsys.readouterr().err

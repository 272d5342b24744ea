"""Routes and devices parsed from the cloud's answers; target templates compiled and rendered."""

from __future__ import annotations

from typing import Any

import pytest

from edge.dataplane.routes import (
    DeviceSpec,
    Endpoint,
    FunctionRef,
    RouteSpec,
    RouteSpecError,
    Side,
    compile_template,
    render,
)
from edge.errors import EdgeError

ROUTE: dict[str, Any] = {
    "name": "telemetry-up",
    "source": {"local": "devices/+/telemetry"},
    "function": {"app": "scale", "function": "convert"},
    "target": {"cloud": "telemetry/{device}"},
    "qos": 1,
}


def test_a_route_parses_into_values() -> None:
    route = RouteSpec.parse(ROUTE)
    assert route.name == "telemetry-up"
    assert route.source == Endpoint(Side.LOCAL, "devices/+/telemetry")
    assert route.function == FunctionRef("scale", "convert")
    assert route.target == Endpoint(Side.CLOUD, "telemetry/{device}")
    assert route.qos == 1
    assert route.render(device="t-1", node="gw-1", topic="devices/t-1/telemetry") == (
        "telemetry/t-1"
    )


def test_function_and_qos_are_optional() -> None:
    route = RouteSpec.parse({**ROUTE, "function": None, "qos": 0})
    assert (route.function, route.qos) == (None, 0)
    body = dict(ROUTE)
    del body["function"], body["qos"]
    assert (RouteSpec.parse(body).function, RouteSpec.parse(body).qos) == (None, 1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": "Bad_Name"}, "DNS subdomain"),
        ({"source": {"local": "a", "cloud": "b"}}, "exactly one"),
        ({"source": {}}, "exactly one"),
        ({"source": {"edge": "a"}}, "'local' or 'cloud'"),
        ({"source": {"local": "a/#/b"}}, "not a topic filter"),
        ({"source": {"local": "$SYS/#"}}, "not a topic filter"),
        ({"source": {"local": ""}}, "non-empty"),
        ({"source": {"cloud": "cmd/#"}, "target": {"cloud": "x"}}, "cloud to the cloud"),
        ({"target": {"cloud": "t/{devic}"}}, "names \\{devic\\}"),
        ({"target": {"cloud": "t/{10}"}}, "names \\{10\\}"),
        ({"target": {"cloud": "t/{device"}}, "brace"),
        ({"target": {"cloud": "t/{{device}}"}}, "brace"),
        ({"target": {"cloud": "t/+/x"}}, "wildcard"),
        ({"target": {"local": "t/#"}}, "wildcard"),
        ({"target": {"local": "$baetyl/x"}}, "starts with '\\$'"),
        ({"target": {"cloud": "/t"}}, "empty level"),
        ({"target": {"cloud": "t//{device}"}}, "empty level"),
        ({"target": {"cloud": "t/"}}, "empty level"),
        ({"qos": 2}, "qos"),
        ({"qos": True}, "qos"),
        ({"function": {"app": "scale"}}, "function"),
        ({"function": {"app": "Scale!", "function": "f"}}, "app name"),
        ({"function": {"app": "scale", "function": "a/b"}}, "function name"),
    ],
)
def test_a_bad_route_is_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(RouteSpecError, match=reason) as caught:
        RouteSpec.parse({**ROUTE, **change})
    assert isinstance(caught.value, EdgeError)
    assert isinstance(caught.value, ValueError)


def test_a_route_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(RouteSpecError, match="JSON object"):
        RouteSpec.parse(["not", "a", "route"])  # type: ignore[arg-type]


def test_every_placeholder_renders() -> None:
    text = "{node}/{device}/{1}/{3}/all/{topic}"
    assert render(text, device="d", node="gw-1", topic="a/b/c") == "gw-1/d/a/c/all/a/b/c"
    assert compile_template(text).levels == 3
    assert render("plain/topic", device="d", node="n", topic="x") == "plain/topic"


def test_a_level_the_source_topic_lacks_is_a_failed_render() -> None:
    with pytest.raises(RouteSpecError, match="has only 2"):
        render("x/{3}", device="d", node="n", topic="a/b")


def test_a_rendered_result_that_is_not_a_topic_is_refused() -> None:
    with pytest.raises(RouteSpecError, match="empty topic"):
        render("{1}", device="d", node="n", topic="/a")
    with pytest.raises(RouteSpecError, match="'\\$' topic"):
        render("{device}/x", device="$dollar", node="n", topic="a")
    with pytest.raises(RouteSpecError, match="65535"):
        render("{topic}/x", device="d", node="n", topic="a" * 65535)


DEVICE: dict[str, Any] = {
    "name": "thermo-1",
    "publish": ["devices/thermo-1/telemetry"],
    "subscribe": ["devices/thermo-1/commands/#"],
    "passwordHash": "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2g=",
    "certificates": ["1f3a", "9"],
}


def test_a_device_parses_and_becomes_its_broker_config_entry() -> None:
    device = DeviceSpec.parse(DEVICE)
    assert device.publish == ("devices/thermo-1/telemetry",)
    assert device.as_config() == DEVICE
    assert DeviceSpec.parse({**DEVICE, "passwordHash": None}).password_hash is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": "x.y"}, "DNS label"),
        ({"publish": "devices/#"}, "list of topic filters"),
        ({"publish": ["a/#/b"]}, "not a topic filter"),
        ({"subscribe": ["$baetyl/#"]}, "'\\$'"),
        ({"publish": [f"d/{n}" for n in range(33)]}, "at most 32"),
        ({"passwordHash": "plain-text"}, "scrypt"),
        ({"certificates": ["1F3A"]}, "lowercase hex"),
        ({"certificates": "1f3a"}, "list of serials"),
    ],
)
def test_a_bad_device_is_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(RouteSpecError, match=reason):
        DeviceSpec.parse({**DEVICE, **change})


def test_a_refused_password_hash_is_never_echoed() -> None:
    with pytest.raises(RouteSpecError) as caught:
        DeviceSpec.parse({**DEVICE, "passwordHash": "secret-looking-value"})
    assert "secret-looking-value" not in str(caught.value)


def test_protocol_md_shows_a_route_the_agent_runs_and_its_stats_keys() -> None:
    """PROTOCOL.md's route example parses; its stats example has the keys the router reports."""
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "PROTOCOL.md").read_text(encoding="utf-8")
    found = dict(re.findall(r"<!-- dataplane: (\w+) -->\n```json\n(.*?)\n```", text, re.S))
    route = RouteSpec.parse(json.loads(found["route"]))
    assert route.render(device="t-1", node="gw-1", topic="devices/t-1/telemetry") == (
        "telemetry/t-1"
    )
    stats = json.loads(found["stats"])["routes"]["telemetry-up"]
    assert set(stats) == {"forwarded", "queued", "dropped", "filtered", "failed", "lastError"}


def test_every_route_and_function_app_name_the_api_accepts_parses() -> None:
    # The API names routes and apps with DNS-1123 subdomains (dots, up to 253 characters); a
    # node refusing such a route would spool for it and never forward a message.
    from management.schemas import validate

    name, app = "telemetry.up", f"scale.{'v' * 200}"
    body = {**ROUTE, "name": name, "function": {"app": app, "function": "convert"}}
    validate("RouteWrite", body)  # accepted by the API
    route = RouteSpec.parse(body)
    assert (route.name, route.function) == (name, FunctionRef(app, "convert"))
    with pytest.raises(RouteSpecError):
        RouteSpec.parse({**ROUTE, "name": "Telemetry..up"})

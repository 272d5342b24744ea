"""``baetyl node get``'s properties table: desired beside reported, refusals with their cause."""

from __future__ import annotations

from management.cli.resources import render_properties


def test_a_node_without_properties_prints_no_table() -> None:
    """No desired, reported or refused property: nothing is printed (not an empty header)."""
    assert render_properties({"name": "gw", "report": {"apps": []}}) == ""


def test_desired_and_reported_side_by_side_with_the_refusals_below() -> None:
    """One row per key from either side (sorted, <none> where a side lacks it, values as
    compact JSON, long ones cut), then each refused property with its cause."""
    node = {
        "properties": {"region": "eu", "baetyl.keepalive": 3, "big": "x" * 60},
        "report": {
            "nodeprops": {"baetyl.keepalive": 30, "temp": 21.5, "fw": {"version": "1.2"}},
            "nodepropsRefused": {"baetyl.keepalive": "baetyl.keepalive must be from 5 to 600."},
        },
    }
    lines = render_properties(node).splitlines()
    rows = [line.split() for line in lines[:-1]]
    assert rows == [
        ["PROPERTY", "DESIRED", "REPORTED"],
        ["baetyl.keepalive", "3", "30"],
        ["big", '"' + "x" * 38 + "…", "<none>"],
        ["fw", "<none>", '{"version":"1.2"}'],
        ["region", '"eu"', "<none>"],
        ["temp", "<none>", "21.5"],
    ]
    assert lines[-1] == "refused baetyl.keepalive: baetyl.keepalive must be from 5 to 600."

"""The agent's data plane: specs asked for, config written, the system app, the reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.dataplane.nodebroker import BROKER_APP, NodeBrokerMode, NodeBrokerSettings
from edge.dataplane.plane import DataPlane
from edge.link import NodeIdentity
from edge.specbook import SpecBook, SpecRef
from shadow import JSONObject, ResourceKind
from tests.edge.dataplane.test_nodebroker import DEVICE, UP

DESIRED = {
    "apps": [],
    "devices": [{"name": "thermo-1", "version": "3"}],
    "routes": [{"name": "telemetry-up", "version": "1"}],
}
DEVICE_REF = SpecRef(ResourceKind.DEVICE, "thermo-1", "3")
ROUTE_REF = SpecRef(ResourceKind.ROUTE, "telemetry-up", "1")


class Reports:
    def __init__(self) -> None:
        self.patches: list[JSONObject] = []

    def put(self, patch: JSONObject) -> None:
        self.patches.append(patch)


@pytest.fixture
def reports() -> Reports:
    return Reports()


def _plane(state: Path, reports: Reports, **settings: Any) -> DataPlane:
    state.mkdir(exist_ok=True)
    (state / "ca.crt").write_text("the cloud CA")
    identity = NodeIdentity(
        "acme.gw-1", "127.0.0.1", 1, state / "node.crt", state / "node.key", state / "ca.crt"
    )
    return DataPlane(
        state,
        identity,
        NodeBrokerSettings(hosts=("gw-1.local",), **settings),
        engine="native",
        function_url=None,
        report=reports.put,
    )


@pytest.fixture
async def plane(tmp_path: Path, reports: Reports) -> AsyncIterator[DataPlane]:
    async with _plane(tmp_path / "state", reports) as plane:
        yield plane


def _certify(plane: DataPlane) -> None:
    """Stand-ins for the certificate's files: the broker may start once they are there."""
    plane.files.root.mkdir(parents=True, exist_ok=True)
    plane.files.cert.write_text("certificate")
    plane.files.key.write_text("key")


async def test_missing_specs_are_asked_for_and_the_broker_waits_for_them(
    plane: DataPlane,
) -> None:
    book = SpecBook()
    apps, missing = plane.reconcile(DESIRED, book)
    assert apps == []
    assert set(missing) == {DEVICE_REF, ROUTE_REF}
    book.put(DEVICE_REF, DEVICE)
    book.put(ROUTE_REF, UP)
    apps, missing = plane.reconcile(DESIRED, book)
    assert missing == []
    assert apps == []  # no certificate yet: the broker could not start
    config = json.loads(plane.files.config.read_text())
    assert [d["name"] for d in config["devices"]] == ["thermo-1"]
    assert config["spool"]["routes"] == {"telemetry-up": "devices/+/telemetry"}
    _certify(plane)
    (app,), _ = plane.reconcile(DESIRED, book)
    assert app.name == BROKER_APP


async def test_the_last_complete_set_stays_while_a_new_spec_is_missing(plane: DataPlane) -> None:
    book = SpecBook({DEVICE_REF.key: DEVICE, ROUTE_REF.key: UP})
    _certify(plane)
    plane.reconcile(DESIRED, book)
    newer = {**DESIRED, "devices": [{"name": "thermo-1", "version": "4"}]}
    (app,), missing = plane.reconcile(newer, book)
    assert missing == [SpecRef(ResourceKind.DEVICE, "thermo-1", "4")]
    assert app.name == BROKER_APP  # the broker keeps running with what it had
    config = json.loads(plane.files.config.read_text())
    assert config["devices"][0]["certificates"] == DEVICE["certificates"]
    book.put(SpecRef(ResourceKind.DEVICE, "thermo-1", "4"), {**DEVICE, "certificates": []})
    plane.reconcile(newer, book)
    assert json.loads(plane.files.config.read_text())["devices"][0]["certificates"] == []


async def test_without_devices_or_routes_no_broker_runs(plane: DataPlane, reports: Reports) -> None:
    _certify(plane)
    apps, missing = plane.reconcile({"apps": []}, SpecBook())
    assert (apps, missing) == ([], [])
    assert not plane.files.config.exists()
    await plane.step(0.0)
    assert reports.patches == []  # nor any report section


async def test_off_never_runs_it_and_on_always(tmp_path: Path, reports: Reports) -> None:
    book = SpecBook({DEVICE_REF.key: DEVICE, ROUTE_REF.key: UP})
    async with _plane(tmp_path / "off", reports, mode=NodeBrokerMode.OFF) as off:
        _certify(off)
        assert off.reconcile(DESIRED, book)[0] == []
    async with _plane(tmp_path / "on", reports, mode=NodeBrokerMode.ON) as on:
        _certify(on)
        (app,), _ = on.reconcile({"apps": []}, book)
        assert app.name == BROKER_APP
        assert json.loads(on.files.config.read_text())["devices"] == []


async def test_devices_and_routes_are_reported_with_what_went_as_null(
    plane: DataPlane, reports: Reports
) -> None:
    book = SpecBook({DEVICE_REF.key: DEVICE, ROUTE_REF.key: UP})
    plane.reconcile(DESIRED, book)
    status = {
        "devices": {"thermo-1": {"online": True, "since": 1700000000.5}},
        "spool": {"rows": 0, "bytes": 0},
        "refused": {},
    }
    plane.files.status.write_text(json.dumps(status))
    await plane.step(0.0)
    (first,) = reports.patches
    assert first["devices"] == {"thermo-1": {"online": True, "since": 1700000000.5}}
    assert isinstance(first["routes"], dict)  # the router's stats (its content is the router's)
    # No certificate could be had (this node has no node.json): the cause is reported.
    assert "holds no activated node" in str(first["nodebroker"])
    await plane.step(0.5)
    assert len(reports.patches) == 1  # at most every 2 s
    await plane.step(2.5)
    assert len(reports.patches) == 1  # nothing changed: nothing reported
    status["devices"] = {"thermo-2": {"online": False, "since": None}}
    plane.files.status.write_text(json.dumps(status))
    await plane.step(5.0)
    assert reports.patches[-1]["devices"] == {
        "thermo-1": None,  # gone from the node: removed from the shadow (a merge patch)
        "thermo-2": {"online": False, "since": None},
    }


async def test_a_restart_with_a_spec_missing_keeps_the_config_and_the_spool(
    tmp_path: Path, reports: Reports
) -> None:
    # The agent saves a new desired document before its specs come: restarted in between (or
    # offline), it has no complete set yet. It must not write a config without the devices (the
    # broker would cut them and delete their sessions) nor hand the router no routes (it would
    # delete their cursors and every spooled row).
    from edge.dataplane.spool import Spool
    from tests.support.polling import until

    state = tmp_path / "state"
    book = SpecBook({DEVICE_REF.key: DEVICE, ROUTE_REF.key: UP})
    async with _plane(state, reports) as before:
        _certify(before)
        before.reconcile(DESIRED, book)
    written = before.files.config.read_bytes()
    spool = Spool(before.files.spool)
    try:
        spool.set_cursors({"telemetry-up": 0})
        spool._db.execute(  # a row the broker spooled, not yet sent
            "INSERT INTO messages (ts, topic, device, qos, payload) VALUES (0, 'devices/"
            "thermo-1/telemetry', 'thermo-1', 1, x'31')"
        )
    finally:
        spool.close()
    newer = {**DESIRED, "devices": [{"name": "thermo-1", "version": "4"}]}
    async with _plane(state, reports) as after:
        (app,), missing = after.reconcile(newer, SpecBook({ROUTE_REF.key: UP}))
        assert missing == [SpecRef(ResourceKind.DEVICE, "thermo-1", "4")]
        assert app.name == BROKER_APP  # the broker keeps running on the config it has
        assert after.files.config.read_bytes() == written
        router = after._router
        if router is not None:  # given time to apply what it was handed, if anything
            await until(lambda: router._wanted is None and router._spool is not None)
            await router._housekeep()
    spool = Spool(before.files.spool)
    try:
        assert spool.cursors() == {"telemetry-up": 0}
        assert [row.topic for row in spool.read(0, 10)] == ["devices/thermo-1/telemetry"]
    finally:
        spool.close()


class _Local:
    """The node broker's publisher stand-in: records what the router publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.published.append((topic, payload, qos))


async def test_a_downlink_message_waits_for_the_routes_instead_of_being_dropped(
    plane: DataPlane,
) -> None:
    # A message the cloud kept for the node arrives as soon as the link is up: before the
    # routes' specs came, it must wait (unacknowledged), not be acknowledged and dropped.
    from tests.edge.dataplane.test_nodebroker import DOWN
    from tests.support.polling import until

    desired = {"apps": [], "routes": [{"name": "commands-down", "version": "1"}]}
    down_ref = SpecRef(ResourceKind.ROUTE, "commands-down", "1")
    acks: list[int] = []
    plane.downlink("cmd/thermo-1", b"open", lambda: acks.append(1))
    _certify(plane)
    book = SpecBook()
    assert plane.reconcile(desired, book)[1] == [down_ref]
    for _ in range(20):  # the downlink task's turns
        await asyncio.sleep(0)
    assert acks == []
    book.put(down_ref, DOWN)
    plane.reconcile(desired, book)
    local = _Local()
    assert plane._router is not None
    plane._router.set_local(local)
    await until(lambda: acks, what="the acknowledgement")
    assert local.published == [("devices/cmd/commands", b"open", 1)]  # {1}: of down/<rest>


async def test_a_deleted_device_goes_from_the_config_while_another_spec_is_missing(
    plane: DataPlane,
) -> None:
    # Deleting a device must cut it within seconds of the node hearing of it, even when
    # another spec of the same change (a route, another device) is still being fetched.
    other = {**DEVICE, "name": "thermo-2"}
    other_ref = SpecRef(ResourceKind.DEVICE, "thermo-2", "1")
    both = {**DESIRED, "devices": [*DESIRED["devices"], {"name": "thermo-2", "version": "1"}]}
    book = SpecBook({DEVICE_REF.key: DEVICE, ROUTE_REF.key: UP, other_ref.key: other})
    _certify(plane)
    plane.reconcile(both, book)
    names = [d["name"] for d in json.loads(plane.files.config.read_text())["devices"]]
    assert names == ["thermo-1", "thermo-2"]
    later = {**DESIRED, "routes": [{"name": "telemetry-up", "version": "2"}]}  # thermo-2 deleted
    _, missing = plane.reconcile(later, book)
    assert missing == [SpecRef(ResourceKind.ROUTE, "telemetry-up", "2")]
    names = [d["name"] for d in json.loads(plane.files.config.read_text())["devices"]]
    assert names == ["thermo-1"]


async def test_the_cloud_links_clients_keep_no_window_of_pahos(plane: DataPlane) -> None:
    # Paho's default window (20 QoS 1 in flight) capped a route at 20 messages per round trip
    # and made paho walk its whole queue at every PUBACK: the cloud received half of what the
    # node acknowledged (bench/dataplane.py). The router bounds what it has in flight itself.
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="acme.gw-1")
    assert client.max_inflight_messages == 20
    plane.cloud_client_made(client)
    assert client.max_inflight_messages == 0
    assert plane._publisher(client) is not None

"""Two cloud replicas on one MariaDB and one Mosquitto: the scale-out mode, for real.

The broker is Mosquitto configured by ``baetyl broker export-config --mosquitto``; the replicas
are ``baetyl up`` with ``bus.mode=external``; the nodes are activated through the API and speak
the shadow protocol over mTLS on the broker's node listener.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shadow.server.mqttbus import owner
from tests.scaleout.cluster import Api, Broker, Replica, SimNode
from tests.support.db import fresh_mysql_database
from tests.support.polling import until_blocking
from tests.support.tools import require_tool
from tests.support.up import BAETYL

NODES = 8

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    broker: Broker
    replicas: list[Replica]
    token: str
    nodes: list[SimNode]

    def api(self, index: int) -> Api:
        return Api(self.replicas[index].api, self.token)


@pytest.fixture
def mysql_url(request: pytest.FixtureRequest) -> Iterator[str]:
    request.getfixturevalue("mariadb")
    with fresh_mysql_database("pybaetyl_scaleout") as database:
        yield database.url


@pytest.fixture
def cluster(tmp_path: Path, mysql_url: str) -> Iterator[Cluster]:
    mosquitto = require_tool("mosquitto")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    base = ["--set", f"database.url={mysql_url}"]
    # Mosquitto started as root runs as its own user, which cannot enter pytest's 0700 tmp dirs.
    broker_dir = Path(tempfile.mkdtemp(prefix="baetyl-broker-"))
    broker_dir.chmod(0o755)
    broker = Broker.export(data, base, broker_dir)
    broker.start(mosquitto)
    settings = [
        *base,
        "--set", "bus.mode=external",
        "--set", f"bus.url=mqtts://127.0.0.1:{broker.cloud_port}",
        "--set", f"bus.public_address=127.0.0.1:{broker.node_port}",
        "--set", "api.port=0", "--set", "api.activation_port=0",
        "--set", "api.activation_host=127.0.0.1",
    ]  # fmt: skip
    replicas = [
        Replica(
            name,
            [BAETYL, "--data-dir", str(data), *settings, "--set", f"bus.client_id={name}", "up"],
            tmp_path,
        )
        for name in ("a", "b")
    ]
    nodes: list[SimNode] = []
    try:
        for replica in replicas:
            replica.start()
        created = subprocess.run(
            [BAETYL, "--data-dir", str(data), *base, "tokens", "create"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        token = created.stdout.strip().splitlines()[-1]
        cluster = Cluster(broker, replicas, token, nodes)
        for index in range(NODES):
            name = f"n{index}"
            # Nodes are created and activated through either replica.
            api = cluster.api(index % 2)
            status, body = api.call("POST", "/nodes", {"name": name, "labels": {"fleet": "x"}})
            assert status == 201, body
            api.activate(name, tmp_path / name)
            nodes.append(SimNode(tmp_path / name))
        for node in nodes:
            node.connect()
        yield cluster
    finally:
        for node in nodes:
            node.close()
        for replica in replicas:
            replica.stop()
        broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)


def _online(api: Api, name: str) -> bool:
    status, body = api.call("GET", f"/nodes/{name}")
    return status == 200 and body["online"] is True


def _all_online(api: Api, names: list[str]) -> bool:
    return all(_online(api, name) for name in names)


def _offline(api: Api, name: str) -> bool:
    return not _online(api, name)


def _props(node: SimNode, wanted: dict[str, int]) -> bool:
    return node.desired.get("nodeprops") == wanted


def _resend_until_settled(node: SimNode) -> bool:
    node.tick(advance=False)
    return node.settled()


def _report_for(cluster: Cluster, seconds: float) -> None:
    """Every node reports a new counter about every 0.2 s for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            node.tick(advance=True)
        time.sleep(0.2)


def test_two_replicas_share_the_nodes_and_survive_one_being_killed(cluster: Cluster) -> None:
    a, b = cluster.api(0), cluster.api(1)
    names = [node.node_id.split(".", 1)[1] for node in cluster.nodes]
    # Each replica handles the requests of some of the nodes (rendezvous hashing on the ids).
    owners = {owner(node.node_id, ["a", "b"]) for node in cluster.nodes}
    assert owners == {"a", "b"}

    # Presence from the nodes' own messages (retained, Last Will): both replicas see them online.
    for api in (a, b):
        until_blocking(functools.partial(_all_online, api, names), 20, "every node online")

    # Desired writes through either replica reach the node, whichever replica answers it.
    for index, name in enumerate(names):
        api = a if index % 2 else b
        status, body = api.call("PUT", f"/nodes/{name}/properties", {"desire": {"round": 1}})
        assert status == 200, body
    for node in cluster.nodes:
        until_blocking(functools.partial(_props, node, {"round": 1}), 15, "round 1 desired")

    # Nodes report while replica a is killed mid-stream.
    _report_for(cluster, 2.0)
    cluster.replicas[0].kill()
    _report_for(cluster, 3.0)
    # Every node's last report is answered in the end (resent to b where a died with it).
    for node in cluster.nodes:
        until_blocking(
            functools.partial(_resend_until_settled, node), 30, f"{node} last report accepted"
        )

    # No accepted report lost: what b's API shows is exactly each node's last counter, which is
    # also the highest counter it saw accepted.
    for node, name in zip(cluster.nodes, names, strict=True):
        status, body = b.call("GET", f"/nodes/{name}")
        assert status == 200
        assert max(node.accepted.values()) == node.counter
        assert body["report"]["counter"] == node.counter, name
        assert not [code for code in node.rejected if code != 429], node.rejected
        # A report is answered once: a request reaches one replica of the shared group.
        assert max(node.answers.values()) == 1, node.answers
    assert sum(len(node.accepted) for node in cluster.nodes) >= NODES * 10

    # After the kill, desired writes through b still reach every node.
    for name in names:
        assert b.call("PUT", f"/nodes/{name}/properties", {"desire": {"round": 2}})[0] == 200
    for node in cluster.nodes:
        until_blocking(functools.partial(_props, node, {"round": 2}), 15, "round 2 desired")

    # Replica a comes back on the same store and serves writes that reach the nodes.
    cluster.replicas[0].start()
    a = cluster.api(0)
    assert a.call("PUT", f"/nodes/{names[0]}/properties", {"desire": {"round": 3}})[0] == 200
    # Polled every 0.1 s as before the shared helper: the check below reads presence at once,
    # and a quicker return here left replica a too little time to have read it (2 runs in 4).
    until_blocking(
        lambda: cluster.nodes[0].desired.get("nodeprops") == {"round": 3}, 15, "round 3", every=0.1
    )
    # ... and knows who is online from the retained presence messages.
    assert all(_online(a, n) for n in names)


def test_a_lost_node_goes_offline_through_its_last_will(cluster: Cluster) -> None:
    a, b = cluster.api(0), cluster.api(1)
    name = cluster.nodes[0].node_id.split(".", 1)[1]
    until_blocking(lambda: _online(a, name) and _online(b, name), 20, "node online")
    cluster.nodes[0].drop()
    for api in (a, b):
        until_blocking(functools.partial(_offline, api, name), 20, "node offline on every replica")
    cluster.nodes[0].connect()
    for api in (a, b):
        until_blocking(functools.partial(_online, api, name), 20, "node online again")


def _ready(port: int) -> int:
    """The status of a replica's /readyz."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_replicas_serve_the_shadow_metrics_and_no_broker_ones(cluster: Cluster) -> None:
    """With an external broker there is no embedded one: a replica's /metrics has no
    ``baetyl_broker_*`` metric, its bus is up, and the nodes' reports show in the shadow's."""
    _report_for(cluster, 1.0)

    def scrape(replica: Replica) -> dict[str, float]:
        url = f"http://127.0.0.1:{replica.api}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:  # loopback http
            text = answer.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}"] = sample.value
        return found

    def reports() -> float:
        return sum(
            scrape(replica).get("baetyl_shadow_requests_total{kind=report}", 0)
            for replica in cluster.replicas
        )

    until_blocking(reports, 15, "reports counted by the replicas")
    for replica in cluster.replicas:
        found = scrape(replica)
        assert not [name for name in found if name.startswith("baetyl_broker_")]
        assert found["baetyl_bus_connected{}"] == 1
        assert "baetyl_shadow_request_duration_seconds_count{}" in found


def test_replicas_are_not_ready_while_the_broker_is_away(cluster: Cluster) -> None:
    """Broker stopped: every replica's /readyz is 503 (its pushes would reach no node); a desired
    write meanwhile is stored and reaches the node once the broker is back and the replicas have
    reconnected by themselves."""
    ports = [replica.api for replica in cluster.replicas]
    assert [_ready(port) for port in ports] == [200, 200]
    cluster.broker.stop()
    until_blocking(
        lambda: [_ready(port) for port in ports] == [503, 503], 15, "both replicas not ready"
    )
    name = cluster.nodes[0].node_id.split(".", 1)[1]
    status, _ = cluster.api(0).call("PUT", f"/nodes/{name}/properties", {"desire": {"away": 1}})
    assert status == 200
    cluster.broker.start(require_tool("mosquitto"))
    until_blocking(
        lambda: [_ready(port) for port in ports] == [200, 200], 30, "both replicas ready"
    )
    until_blocking(lambda: _props(cluster.nodes[0], {"away": 1}), 30, "the write made while away")


def test_the_exported_acl_keeps_nodes_to_their_own_topics(cluster: Cluster) -> None:
    a = cluster.api(0)
    spy, victim = cluster.nodes[0], cluster.nodes[1]
    victim_name = victim.node_id.split(".", 1)[1]
    assert spy.client is not None
    # Subscribing to another node's desire, and to everything, yields none of its messages.
    for topic_filter in (victim.topic("desire"), "$baetyl/#", "#"):
        spy.client.subscribe(topic_filter, qos=1)
    # Publishing a report for another node changes nothing there.
    forged = {"clientToken": "forged", "reported": {"counter": -1}}
    spy.client.publish(victim.topic("report"), json.dumps(forged), qos=1)
    # Taking over another node's session: the broker makes the client id the certificate's CN.
    impostor = SimNode(spy.state_dir)
    impostor.connect(client_id=victim.node_id)
    try:
        assert a.call("PUT", f"/nodes/{victim_name}/properties", {"desire": {"x": 1}})[0] == 200
        until_blocking(lambda: victim.desired.get("nodeprops") == {"x": 1}, 15, "victim's desired")
        time.sleep(1.0)  # what would leak has had time to arrive
        with spy.lock:
            leaked = [t for t in spy.received if t.startswith(victim.topic(""))]
        assert leaked == []
        status, body = a.call("GET", f"/nodes/{victim_name}")
        assert status == 200
        assert "counter" not in body["report"]
        assert victim.connected.is_set()  # not kicked by the impostor's client id
    finally:
        impostor.close()


def test_an_operator_reads_the_traffic_with_mosquitto_sub(cluster: Cluster, tmp_path: Path) -> None:
    sub = require_tool("mosquitto_sub")
    data = tmp_path / "data"
    subprocess.run(
        [BAETYL, "--data-dir", str(data), "certs", "issue", "operator", "--name", "ops",
         "--out-dir", str(tmp_path / "ops")],
        check=True, capture_output=True,
    )  # fmt: skip
    node = cluster.nodes[0]
    ops = tmp_path / "ops"
    proc = subprocess.Popen(
        [sub, "-h", "127.0.0.1", "-p", str(cluster.broker.node_port), "-V", "mqttv311",
         "--cafile", str(ops / "ca.crt"), "--cert", str(ops / "ops.crt"),
         "--key", str(ops / "ops.key"), "-t", node.topic("report/accepted"), "-C", "1",
         "-W", "20", "-i", "operator:ops"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # mosquitto_sub has subscribed
    node.tick(advance=True)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["clientToken"].startswith("r1-")

    # The exported ACL keeps the resource answers (secret values) from operators: of the two
    # messages below, the operator's "$baetyl/node/#" gets the second only.
    proc = subprocess.Popen(
        [sub, "-h", "127.0.0.1", "-p", str(cluster.broker.node_port), "-V", "mqttv311",
         "--cafile", str(ops / "ca.crt"), "--cert", str(ops / "ops.crt"),
         "--key", str(ops / "ops.key"), "-t", "$baetyl/node/#", "-R", "-C", "1", "-W", "20", "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert node.client is not None
    node.client.subscribe(node.topic("resource"), qos=1)  # the node itself does get it
    time.sleep(1.0)
    service = data / "server"
    stale = '{"version":0,"desired":{}}'  # a desire the node ignores (version 0)
    for channel, payload in (("resource", '{"value":"secret"}'), ("desire", stale)):
        subprocess.run(
            [require_tool("mosquitto_pub"), "-h", "127.0.0.1",
             "-p", str(cluster.broker.cloud_port), "--cafile", str(ops / "ca.crt"),
             "--cert", str(service / "service.crt"), "--key", str(service / "service.key"),
             "-i", "service:cloud/test", "-q", "1", "-t", node.topic(channel), "-m", payload],
            check=True, capture_output=True,
        )  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == [node.topic("desire"), stale]
    until_blocking(
        lambda: node.topic("resource") in node.received, 10, "the node's resource answer"
    )


def test_export_config_refuses_to_overwrite(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = tmp_path / "broker"
    argv = [BAETYL, "--data-dir", str(data), "broker", "export-config", "--emqx", "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True)
    acl = (out / "acl.conf").read_text()
    assert '"$baetyl/node/${username}/report"' in acl
    assert acl.rstrip().endswith("{deny, all}.")
    key = (out / "server.key").read_bytes()
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert (out / "server.key").read_bytes() == key

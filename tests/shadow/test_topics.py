"""The topic layout is named twice, and these tests tie the two: ``broker.acl`` (which channels a
node may publish to and receive from; the broker cannot import the shadow) and ``shadow.topics``
(which the shadow service and the edge build and parse topics with; the edge cannot import the
broker)."""

from __future__ import annotations

from broker import NODE_DOWNSTREAM, NODE_SECRETS, NODE_UPSTREAM, filter_matches, node_prefix
from shadow import topics
from shadow.topics import DOWNSTREAM, PRESENCE, UPSTREAM, Channel


def test_the_upstream_channels_are_the_brokers() -> None:
    """What a node may publish is exactly its requests and its presence."""
    assert sorted(NODE_UPSTREAM) == sorted([*UPSTREAM, PRESENCE])


def test_the_downstream_channels_are_the_brokers() -> None:
    """What a node may receive is exactly the answers and pushes the shadow sends."""
    assert sorted(NODE_DOWNSTREAM) == sorted(DOWNSTREAM)
    assert NODE_SECRETS == Channel.RESOURCE


def test_the_prefix_is_the_brokers() -> None:
    """A topic the shadow builds lies inside the prefix the broker confines the node to."""
    for channel in Channel:
        built = topics.topic("acme.gw-1", channel)
        assert built.startswith(node_prefix("acme.gw-1"))
        assert topics.parse(built) == ("acme.gw-1", channel)


def test_the_services_filters_match_what_nodes_send() -> None:
    """The shadow's subscription filter for a channel matches that channel of any node (with the
    broker's matching) and no other channel."""
    for channel in Channel:
        for other in Channel:
            sent = topics.topic("acme.gw-1", other)
            assert filter_matches(topics.subscription_filter(channel), sent) is (other is channel)


def test_the_data_plane_directions_are_the_brokers() -> None:
    """``up`` and ``down`` are named the same on both sides, and the built topics parse back."""
    from broker import NODE_DOWNLINK, NODE_UPLINK

    assert (topics.UP, topics.DOWN) == (NODE_UPLINK, NODE_DOWNLINK)
    up = topics.uplink("acme.gw-1", "telemetry/thermo-1")
    assert up == "$baetyl/node/acme.gw-1/up/telemetry/thermo-1"
    assert topics.parse_data(up) == ("acme.gw-1", "up", "telemetry/thermo-1")
    assert topics.parse(up) is None  # not a shadow request
    down = topics.downlink("acme.gw-1", "cmd/reboot")
    assert topics.parse_data(down) == ("acme.gw-1", "down", "cmd/reboot")
    assert filter_matches(topics.downlink("acme.gw-1"), down)
    assert topics.parse_data("$baetyl/node/acme.gw-1/up") is None
    assert topics.parse_data("$baetyl/node/acme.gw-1/report") is None

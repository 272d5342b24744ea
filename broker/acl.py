"""Who may touch which topic, decided from the verified identity alone.

Rules (PROTOCOL.md has the topic table):

* a **node** publishes only to its own upstream topics ``$baetyl/node/<id>/{report,desire/get,
  resource/get,presence}`` and its uplink ``$baetyl/node/<id>/up/...`` (what its routes send), and
  subscribes only to filters inside ``$baetyl/node/<id>/`` that cannot match an upstream topic
  and do not name its uplink (so it can never see another node's traffic, nor need a per-message
  check); its downlink
  ``$baetyl/node/<id>/down/...`` is what services send it;
* an **operator** reads everything and publishes nothing (``mosquitto_sub -t '$baetyl/#'``);
* a **service** (the cloud's own components) may do anything;
* a **local** client (plaintext loopback listener, no certificate) may use ordinary topics but
  never a ``$`` topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certs import Identity, Kind

__all__ = [
    "NODE_DOWNLINK",
    "NODE_DOWNSTREAM",
    "NODE_SECRETS",
    "NODE_UPLINK",
    "NODE_UPSTREAM",
    "Principal",
    "Role",
    "client_id_allowed",
    "filter_matches",
    "may_publish",
    "may_receive",
    "may_subscribe",
    "node_prefix",
    "valid_filter",
    "valid_topic",
]

# shadow/topics.py names the same channels (the broker cannot import it);
# tests/shadow/test_topics.py ties the two.
NODE_UPSTREAM = ("report", "desire/get", "resource/get", "presence")
# The downstream channel that carries secret values (resource answers): for the node alone.
NODE_SECRETS = "resource"
NODE_DOWNSTREAM = (
    "desire",
    "desire/rejected",
    "delta",
    "report/accepted",
    "report/rejected",
    "resource",
    "resource/rejected",
)
# The data plane (shadow/topics.py: UP, DOWN): a node publishes under up/, receives under down/.
NODE_UPLINK = "up"
NODE_DOWNLINK = "down"


class Role(StrEnum):
    NODE = "node"
    OPERATOR = "operator"
    SERVICE = "service"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class Principal:
    """The party behind one connection: its role and the name the ACL keys on."""

    role: Role
    name: str  # the node id for nodes, the certificate CN otherwise, "local" for plaintext

    @classmethod
    def from_identity(cls, identity: Identity) -> Principal | None:
        """The cloud broker's principal of a certificate identity; None for a device, which only
        its node's broker accepts (its CA is not the cloud broker's, so this is a second line)."""
        role = {Kind.NODE: Role.NODE, Kind.OPERATOR: Role.OPERATOR, Kind.SERVICE: Role.SERVICE}
        if identity.kind not in role:
            return None
        return cls(role[identity.kind], identity.common_name)

    @classmethod
    def local(cls) -> Principal:
        return cls(Role.LOCAL, "local")


def node_prefix(node_id: str) -> str:
    return f"$baetyl/node/{node_id}/"


def valid_filter(topic_filter: str) -> bool:
    """A filter is non-empty; ``+`` and ``#`` fill whole levels and ``#`` comes last."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            return False
        if level == "#" and index != len(levels) - 1:
            return False
    return True


def valid_topic(topic: str) -> bool:
    """A topic name is non-empty and holds no wildcard and no NUL."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def filter_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic matching, including the rule that wildcards never match ``$`` topics."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(levels) == len(topic_levels)


def client_id_allowed(principal: Principal, client_id: str) -> bool:
    """Nodes use exactly their node id; operators and services their CN or ``<CN>/<suffix>``."""
    if principal.role is Role.NODE:
        return client_id == principal.name
    if principal.role in (Role.OPERATOR, Role.SERVICE):
        return client_id == principal.name or (
            client_id.startswith(principal.name + "/") and len(client_id) > len(principal.name) + 1
        )
    # Local clients may not use any certificate identity's client id.
    return bool(client_id) and ":" not in client_id.split("/")[0] and "." not in client_id


def may_publish(principal: Principal, topic: str) -> bool:
    if not valid_topic(topic):
        return False
    if principal.role is Role.SERVICE:
        return True
    if principal.role is Role.NODE:
        prefix = node_prefix(principal.name)
        if not topic.startswith(prefix):
            return False
        rest = topic[len(prefix) :]
        return rest in NODE_UPSTREAM or (
            rest.startswith(NODE_UPLINK + "/") and len(rest) > len(NODE_UPLINK) + 1
        )
    if principal.role is Role.LOCAL:
        return not topic.startswith("$")
    return False  # operators are read-only


def may_subscribe(principal: Principal, topic_filter: str) -> bool:
    if not valid_filter(topic_filter):
        return False
    if principal.role in (Role.SERVICE, Role.OPERATOR):
        return True
    if principal.role is Role.LOCAL:
        return not topic_filter.startswith("$")
    prefix = node_prefix(principal.name)
    if not topic_filter.startswith(prefix) or len(topic_filter) == len(prefix):
        return False
    if _may_match_uplink(topic_filter[len(prefix) :]):
        return False
    return not any(filter_matches(topic_filter, prefix + up) for up in NODE_UPSTREAM)


def _may_match_uplink(rest: str) -> bool:
    """Whether a filter names the node's uplink explicitly (``up/...``).

    A wildcard first level (``+/rejected``, which the node's own answers need) may also match an
    ``up/`` topic; only the node and the cloud's services publish there, so such a filter can
    bring the node its own data at most, never another node's.
    """
    first, sep, tail = rest.partition("/")
    return first == NODE_UPLINK and bool(sep) and bool(tail)


def may_receive(principal: Principal, topic: str) -> bool:
    """Whether a message on ``topic`` may reach this principal.

    Checked for retained messages, and for every message to an operator: operators read
    everything but the answers to ``resource/get``, which carry secret values in clear.
    """
    if principal.role is Role.SERVICE:
        return True
    if principal.role is Role.OPERATOR:
        return not (topic.startswith("$baetyl/node/") and topic.endswith("/" + NODE_SECRETS))
    if principal.role is Role.LOCAL:
        return not topic.startswith("$")
    prefix = node_prefix(principal.name)
    if not topic.startswith(prefix):
        return False
    rest = topic[len(prefix) :]
    return rest not in NODE_UPSTREAM and not rest.startswith(NODE_UPLINK + "/")

"""The embedded MQTT broker: amqtt, hardened.

Every client proves who it is with a certificate from our CA (plaintext only on an optional
loopback listener that never reaches ``$`` topics); the identity comes from the verified
certificate at every CONNECT; topic access follows from the identity alone (see ``acl``);
revocations and server certificate rotations apply without a restart. ``broker.node`` is the
node broker devices connect to, the same core in a process of its own (``python -m broker.node``).

Exceptions::

    BrokerError
    ├── TLSConfigError
    ├── BrokerStartError
    ├── NodeConfigError    the node broker's configuration (broker/node/)
    └── SpoolError         the node broker's spool database
"""

from broker.acl import (
    NODE_DOWNLINK,
    NODE_DOWNSTREAM,
    NODE_SECRETS,
    NODE_UPLINK,
    NODE_UPSTREAM,
    Principal,
    Role,
    client_id_allowed,
    filter_matches,
    may_publish,
    may_receive,
    may_subscribe,
    node_prefix,
    valid_filter,
    valid_topic,
)
from broker.core import LocalHandler
from broker.embedded import EmbeddedBroker
from broker.errors import BrokerError, BrokerStartError, TLSConfigError
from broker.events import (
    ConnectionEvent,
    ConnectionListener,
    DeniedListener,
    DeniedPublish,
    DisconnectReason,
    EventKind,
)
from broker.gcpolicy import freeze_long_lived
from broker.refusals import RefusalReason
from broker.settings import BrokerSettings, TLSFiles
from broker.stats import BrokerStats, DropReason

__all__ = [
    "NODE_DOWNLINK",
    "NODE_DOWNSTREAM",
    "NODE_SECRETS",
    "NODE_UPLINK",
    "NODE_UPSTREAM",
    "BrokerError",
    "BrokerSettings",
    "BrokerStartError",
    "BrokerStats",
    "ConnectionEvent",
    "ConnectionListener",
    "DeniedListener",
    "DeniedPublish",
    "DisconnectReason",
    "DropReason",
    "EmbeddedBroker",
    "EventKind",
    "LocalHandler",
    "Principal",
    "RefusalReason",
    "Role",
    "TLSConfigError",
    "TLSFiles",
    "client_id_allowed",
    "filter_matches",
    "freeze_long_lived",
    "may_publish",
    "may_receive",
    "may_subscribe",
    "node_prefix",
    "valid_filter",
    "valid_topic",
]

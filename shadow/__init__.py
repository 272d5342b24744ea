"""The shadow: each node's desired and reported state, and the protocol that carries it.

This package's top level is **pure** (no ORM, no broker): the document model (merge, delta,
versions, limits), the codecs, the topics and the message envelopes. The edge imports it. The
service that stores shadows and talks over the bus is ``shadow.server``.

Exceptions (``shadow.errors``)::

    ShadowError
    ├── RequestError (code)  BadRequest 400, Forbidden 403, NotFound 404, Conflict 409,
    │                        TooLarge 413, TooManyRequests 429, Unavailable 500
    └── StoreError
        └── StaleWrite
"""

from shadow.codec import Encoding, decode, encode, sniff
from shadow.document import EMPTY, JSONObject, Limits, Section, delta, merge, validate
from shadow.envelopes import (
    Accepted,
    Delta,
    DesiredFollower,
    DesireMessage,
    GetRequest,
    Rejected,
    ReportRequest,
    ResourceKind,
    ResourceMessage,
    ResourceRequest,
    get_message,
    parse_accepted,
    parse_delta,
    parse_desire,
    parse_rejected,
    parse_resource,
    report_message,
    resource_get_message,
)
from shadow.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RequestError,
    ShadowError,
    StaleWrite,
    StoreError,
    TooLarge,
    TooManyRequests,
    Unavailable,
)
from shadow.settings import ShadowSettings
from shadow.topics import (
    PRESENCE,
    Channel,
    downlink,
    parse,
    parse_data,
    topic,
    uplink,
    valid_node_id,
)

__all__ = [
    "EMPTY",
    "PRESENCE",
    "Accepted",
    "BadRequest",
    "Channel",
    "Conflict",
    "Delta",
    "DesireMessage",
    "DesiredFollower",
    "Encoding",
    "Forbidden",
    "GetRequest",
    "JSONObject",
    "Limits",
    "NotFound",
    "Rejected",
    "ReportRequest",
    "RequestError",
    "ResourceKind",
    "ResourceMessage",
    "ResourceRequest",
    "Section",
    "ShadowError",
    "ShadowSettings",
    "StaleWrite",
    "StoreError",
    "TooLarge",
    "TooManyRequests",
    "Unavailable",
    "decode",
    "delta",
    "downlink",
    "encode",
    "get_message",
    "merge",
    "parse",
    "parse_accepted",
    "parse_data",
    "parse_delta",
    "parse_desire",
    "parse_rejected",
    "parse_resource",
    "report_message",
    "resource_get_message",
    "sniff",
    "topic",
    "uplink",
    "valid_node_id",
    "validate",
]

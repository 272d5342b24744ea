"""The amqtt internals the broker overrides or calls are still there, as the ``<0.13`` pin assumes.

If one of these fails after an amqtt upgrade, read the new amqtt code before touching the pin:
the override may silently stop being called (a renamed method) or get the wrong arguments.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from broker.core import HardenedBroker
from broker.embedded import CONNECT_FAILED
from broker.handler import HardenedHandler

BROKER_METHODS: dict[str, tuple[list[str], bool]] = {
    # name: (parameter names, is a coroutine function)
    "_create_ssl_context": (["listener"], False),  # a staticmethod in 0.12
    "_create_server_instance": (
        ["self", "listener_name", "listener_type", "address", "port", "ssl_context"],
        True,
    ),
    "stream_connected": (["self", "reader", "writer", "listener_name"], True),
    "ws_connected": (["self", "websocket", "listener_name"], True),
    "_client_connected": (["self", "listener_name", "reader", "writer"], True),
    "_initialize_client_session": (
        ["self", "reader", "writer", "remote_address", "remote_port"],
        True,
    ),
    "_authenticate": (["self", "session", "_"], True),
    "create_offline_session": (["self", "client_id"], False),
    "_handle_client_session": (
        ["self", "reader", "writer", "client_session", "handler", "server", "listener_name"],
        True,
    ),
    "_handle_message_delivery": (["self", "client_session", "handler", "wait_deliver"], True),
    "_topic_filtering": (["self", "session", "topic", "action"], True),
    "add_subscription": (["self", "subscription", "session"], True),
    "_del_subscription": (["self", "a_filter", "session"], False),
    "_del_all_subscriptions": (["self", "session"], True),
    "_broadcast_message": (["self", "session", "topic", "data", "force_qos"], True),
    "_publish_session_retained_messages": (["self", "session"], True),
    "_publish_retained_messages_for_subscription": (["self", "subscription", "session"], True),
    "_handle_disconnect": (["self", "client_session", "handler", "disconnect_waiter"], True),
    "_cleanup_session": (["self", "client_id"], True),
    "_delete_session": (["self", "client_id"], True),
    "retain_message": (["self", "source_session", "topic_name", "data", "qos"], True),
    "_start_listeners": (["self"], True),
    "shutdown": (["self"], True),  # called after stop_serving and the snapshot
    "internal_message_broadcast": (["self", "topic", "data", "qos"], True),
    # called, not overridden
    "_client_message_loop": (["self", "client_session", "handler"], True),
    "_get_handler": (["self", "session"], False),
}

HANDLER_METHODS: dict[str, tuple[list[str], bool]] = {
    "stop": (["self"], True),
    "handle_read_timeout": (["self"], False),
    "_reader_loop": (["self"], True),
    "_retry_deliveries": (["self"], True),
    "init_from_connect": (["reader", "writer", "plugins_manager", "loop"], True),  # classmethod
    # called, not overridden
    "handle_connection_closed": (["self"], True),
    "mqtt_connack_authorize": (["self", "authorize"], True),
    "attach": (["self", "session", "reader", "writer"], False),
    "start": (["self"], True),
    "_stop_waiters": (["self"], False),
    # what amqtt's reader loop (WebSocket connections) calls for each packet: ours
    "handle_publish": (["self", "publish_packet"], True),
    "handle_puback": (["self", "puback"], True),
    "handle_pubrec": (["self", "pubrec"], True),
    "handle_pubrel": (["self", "pubrel"], True),
    "handle_pubcomp": (["self", "pubcomp"], True),
    "handle_subscribe": (["self", "subscribe"], True),
    "handle_unsubscribe": (["self", "unsubscribe"], True),
    "handle_disconnect": (["self", "disconnect"], True),
}


def _check(owner: type[Any], name: str, expected: tuple[list[str], bool]) -> None:
    method = getattr(owner, name, None)
    assert method is not None, f"{owner.__name__}.{name} is gone"
    parameters, is_coroutine = expected
    assert list(inspect.signature(method).parameters) == parameters
    assert inspect.iscoroutinefunction(method) is is_coroutine


@pytest.mark.parametrize(("name", "expected"), BROKER_METHODS.items())
def test_amqtt_broker_internals_are_unchanged(name: str, expected: tuple[list[str], bool]) -> None:
    """Each amqtt Broker method the broker overrides or calls keeps its parameters."""
    _check(Broker, name, expected)


@pytest.mark.parametrize(("name", "expected"), HANDLER_METHODS.items())
def test_amqtt_handler_internals_are_unchanged(name: str, expected: tuple[list[str], bool]) -> None:
    """Each BrokerProtocolHandler method the hardened handler overrides or calls keeps its
    parameters."""
    _check(BrokerProtocolHandler, name, expected)


@pytest.mark.parametrize("name", [n for n in BROKER_METHODS if n in vars(HardenedBroker)])
def test_overrides_accept_what_amqtt_passes(name: str) -> None:
    """Each override is a coroutine exactly when amqtt's method is, and takes as many arguments."""
    ours, theirs = getattr(HardenedBroker, name), getattr(Broker, name)
    assert inspect.iscoroutinefunction(ours) is inspect.iscoroutinefunction(theirs)
    # _create_ssl_context is static in amqtt and a method here: compare without ``self``.
    count = [p for p in inspect.signature(ours).parameters if p != "self"]
    expected = [p for p in inspect.signature(theirs).parameters if p != "self"]
    assert len(count) == len(expected), name


def test_handler_overrides_exist_on_the_base() -> None:
    """HardenedHandler only overrides methods BrokerProtocolHandler has."""
    for name in ("stop", "handle_read_timeout", "_reader_loop", "_retry_deliveries"):
        assert name in vars(HardenedHandler)
        assert hasattr(BrokerProtocolHandler, name)


def test_start_empties_the_state_before_it_opens_the_listeners() -> None:
    """The snapshot is installed in ``_start_listeners``: after start() has emptied the sessions
    and retained messages (else they would be wiped), before any connection is accepted."""
    source = inspect.getsource(Broker.start)
    assert source.index("self._sessions.clear()") < source.index("self._start_listeners()")
    assert source.index("self._retained_messages.clear()") < source.index("_start_listeners()")


def test_adapters_keep_the_attributes_the_broker_reaches_into() -> None:
    """The size-limited reader wraps StreamReaderAdapter; close_quietly aborts via ``_writer``."""
    assert list(inspect.signature(StreamReaderAdapter.__init__).parameters) == ["self", "reader"]
    source = inspect.getsource(StreamWriterAdapter.__init__)
    assert "self._writer" in source


async def test_broker_state_attributes_exist() -> None:
    """The per-broker state the hardened broker reads is still where it was."""
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": None}}, "plugins": {}})
    for name in (
        "_sessions",
        "_subscriptions",
        "_retained_messages",
        "_broadcast_queue",
        "_servers",
    ):
        assert hasattr(broker, name), name
    assert hasattr(broker, "plugins_manager")


def test_the_refused_connect_warning_is_still_the_one_turned_down() -> None:
    """broker/embedded.py turns amqtt's per-connection warning down to DEBUG by its text; a new
    wording would flood the log again with one line per refused CONNECT."""
    source = inspect.getsource(Broker._client_connected)
    assert f'self.logger.warning(f"{CONNECT_FAILED}: {{exc}}")' in source

"""PLACEHOLDER (dp-agent): dp-routes' ``edge/dataplane/publisher.py`` replaces this file at merge.

Only the interface ``edge.dataplane.plane`` uses, per the data-plane contract of issue 15.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import paho.mqtt.client as mqtt

__all__ = ["PahoPublisher", "PublishFailed", "Publisher"]


class PublishFailed(Exception):
    """The connection was lost before the broker acknowledged the message."""


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, qos: int) -> None: ...


class PahoPublisher:
    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._client = client

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        info = self._client.publish(topic, payload, qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishFailed(mqtt.error_string(info.rc))
        await asyncio.to_thread(info.wait_for_publish, 10.0)

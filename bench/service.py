"""The cloud-side client of the benchmark (service:bench): publishes desires, counts reports."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from bench import mqtt

__all__ = ["ServiceClient"]


class ServiceClient(asyncio.Protocol):
    """A raw MQTT client with the service certificate; one connection, no tasks per message."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.transport: asyncio.Transport | None = None
        self.reader = mqtt.PacketReader()
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.subscribed: asyncio.Future[int] = loop.create_future()
        self.window = asyncio.Semaphore(4096)
        self.free_ids: list[int] = list(range(4096, 0, -1))
        self.acked = 0
        self.all_acked = asyncio.Event()
        self.expected_acks = 0
        self.reports = 0
        self.lost: Exception | None = None

    @classmethod
    async def open(cls, port: int, ca_file: Path, cert_file: Path, client_id: str) -> ServiceClient:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=ca_file)
        ctx.load_cert_chain(cert_file)
        client = cls(client_id)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(30):
            await loop.create_connection(
                lambda: client, "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            await client.connected
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(mqtt.connect(self.client_id, keepalive=600))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost = exc or ConnectionError("closed by the broker")
        for future in (self.connected, self.subscribed):
            if not future.done():
                future.set_exception(self.lost)
        self.all_acked.set()

    def data_received(self, data: bytes) -> None:
        for kind, flags, body in self.reader.feed(data):
            if kind == mqtt.PUBACK:
                self.free_ids.append(mqtt.packet_id_of(body))
                self.window.release()
                self.acked += 1
                if self.acked >= self.expected_acks:
                    self.all_acked.set()
            elif kind == mqtt.PUBLISH:
                _topic, qos, packet_id, _payload = mqtt.parse_publish(flags, body)
                self.reports += 1
                if qos and self.transport is not None:
                    self.transport.write(mqtt.puback(packet_id))
            elif kind == mqtt.CONNACK and not self.connected.done():
                if body[1] == 0:
                    self.connected.set_result(None)
                else:
                    self.connected.set_exception(ConnectionError(f"CONNACK {body[1]}"))
            elif kind == mqtt.SUBACK and not self.subscribed.done():
                self.subscribed.set_result(body[2])

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe to one filter; returns the SUBACK return code."""
        assert self.transport is not None
        self.transport.write(mqtt.subscribe(1, topic_filter, qos))
        async with asyncio.timeout(30):
            return await self.subscribed

    async def publish_all(
        self, topics: Sequence[str], payload: bytes, deadline: float
    ) -> tuple[float, float | None]:
        """QoS 1 PUBLISH to every topic, pipelined; returns (first write, last PUBACK) times."""
        self.acked = 0
        self.expected_acks = len(topics)
        self.all_acked.clear()
        first = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, deadline - first)):
                for topic in topics:
                    await self.window.acquire()
                    if self.transport is None:
                        break
                    packet_id = self.free_ids.pop()
                    self.transport.write(mqtt.publish(topic, payload, qos=1, packet_id=packet_id))
                await self.all_acked.wait()
        except TimeoutError:
            return first, None
        return first, (time.monotonic() if self.acked >= len(topics) else None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

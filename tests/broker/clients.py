"""The clients the broker tests use; close every one of them (unclosed sockets fail the run).

* `MqttClient` wraps paho (threaded loop) and records CONNACKs, SUBACKs and messages;
* `MosquittoSub` and `mosquitto_pub` run the Mosquitto command-line clients.
"""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.broker.helpers import HOST, QUIET, WAIT, Creds
from tests.support.ci import missing

CONNACK_NOT_AUTHORIZED = 135  # paho maps MQTT 3.1.1 CONNACK 5 to the v5 code "Not authorized"

# -- paho ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One PUBLISH as a client received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool = False


class TrackingContext(ssl.SSLContext):
    """A client context that remembers its sockets, which paho leaks when a handshake fails."""

    opened: list[ssl.SSLSocket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        wrapped = super().wrap_socket(*args, **kwargs)
        if not hasattr(self, "opened"):
            self.opened = []
        self.opened.append(wrapped)
        return wrapped

    def close_all(self) -> None:
        for sock in getattr(self, "opened", []):
            sock.close()


class MqttClient:
    """A paho client on its threaded loop that records what it receives; always close it."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        ca: Path | None,
        creds: Creds | None = None,
        clean_session: bool = True,
        transport: str = "tcp",
    ) -> None:
        self.port = port
        self.client_id = client_id
        self.messages: queue.Queue[Message] = queue.Queue()
        self.connacks: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.subacks: dict[int, list[int]] = {}
        self.disconnected = threading.Event()
        self._subacked = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            transport="websockets" if transport == "websockets" else "tcp",
            reconnect_on_failure=False,  # never reconnect behind the test's back
        )
        self._tls: TrackingContext | None = None
        if ca is not None:
            self._tls = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
            self._tls.load_verify_locations(cafile=ca)
            if creds is not None:
                self._tls.load_cert_chain(creds.cert, creds.key)
            self.client.tls_set_context(self._tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self._started = False

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.connacks.put((reason.value, flags.session_present))

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.dup)
        )

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._subacked:
            self.subacks[mid] = [reason.value for reason in reasons]
            self._subacked.notify_all()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self.disconnected.set()
        self.connacks.put((-1, False))  # wakes a try_connect whose CONNACK will never come

    # -- connecting --------------------------------------------------------------------------

    def try_connect(self, timeout: float = WAIT, keepalive: int = 60) -> tuple[int, bool] | None:
        """The CONNACK (reason code, session present), or None if none came (TLS refused)."""
        try:
            self.client.connect(HOST, self.port, keepalive=keepalive)
        except (OSError, ssl.SSLError):
            # paho leaves the socket of a failed handshake open; close it ourselves.
            if self._tls is not None:
                self._tls.close_all()
            return None
        self.client.loop_start()
        self._started = True
        try:
            code, session_present = self.connacks.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if code < 0 else (code, session_present)

    def connect(self, keepalive: int = 60) -> bool:
        """Connect, insist on CONNACK 0, and return the session-present flag."""
        result = self.try_connect(keepalive=keepalive)
        assert result is not None, f"{self.client_id}: no CONNACK"
        code, session_present = result
        assert code == 0, f"{self.client_id}: CONNACK {code}"
        return session_present

    def close(self) -> None:
        """Disconnect cleanly (if connected) and stop the network thread."""
        self.client.disconnect()
        if self._started:
            self.client.loop_stop()
            self._started = False
            # paho closes the socket pair that wakes its loop only in __del__, and a client is in
            # a reference cycle (its callbacks): the collector may finalize those sockets first,
            # which then warn as unclosed at the end of the run.
            self.client._reset_sockets(sockpair_only=True)
        sock = self.client.socket()
        if sock is not None:  # a connect() whose loop never started
            sock.close()
        # paho closes the socket pair of loop_start only in its __del__; when the client ends up
        # in a reference cycle, the collector may finalize those sockets first (ResourceWarning).
        for name in ("_sockpairR", "_sockpairW"):
            pair_end = getattr(self.client, name, None)
            if pair_end is not None:
                pair_end.close()
                setattr(self.client, name, None)

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, as a crashed client would."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        # The plain socket's shutdown (not SSLSocket's) sends a FIN without a TLS close_notify and
        # wakes paho's loop, which sees the connection lost and ends (no reconnect).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self.client.loop_stop()
        self._started = False
        if self.client.socket() is not None:
            sock.close()

    # -- traffic -----------------------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 0) -> list[int]:
        """Subscribe and return the SUBACK's return codes."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        deadline = time.monotonic() + WAIT
        with self._subacked:
            while mid not in self.subacks:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.client_id}: no SUBACK for {topic}"
                self._subacked.wait(left)
            return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"{self.client_id}: no PUBACK for {topic}"

    def receive(self, timeout: float = WAIT) -> Message:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id} received nothing within {timeout} s") from None

    def receive_on(self, topic: str, timeout: float = WAIT) -> Message:
        """The next message on `topic`, skipping others."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if message.topic == topic:
                return message
        raise AssertionError(f"{self.client_id} received nothing on {topic} within {timeout} s")

    def drain(self, quiet: float = QUIET) -> list[Message]:
        """Everything that arrives until nothing has for `quiet` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out


# -- Mosquitto's clients ---------------------------------------------------------------------------


def require_mosquitto() -> None:
    """Skip without the Mosquitto clients; in CI their absence is a failure."""
    if shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub"):
        return
    missing(
        "mosquitto_pub/mosquitto_sub are not installed; "
        "install them with 'apt-get install mosquitto-clients'."
    )


def _tls_args(port: int, ca: Path, creds: Creds, client_id: str | None) -> list[str]:
    return [
        "-h",
        HOST,
        "-p",
        str(port),
        "-V",
        "mqttv311",
        "--cafile",
        str(ca),
        "--cert",
        str(creds.cert),
        "--key",
        str(creds.key),
        "-i",
        client_id or creds.client_id,
    ]


def mosquitto_pub(
    port: int,
    ca: Path,
    creds: Creds,
    topic: str,
    message: str,
    *,
    client_id: str | None = None,
    qos: int = 1,
) -> subprocess.CompletedProcess[str]:
    """Publish each line of `message` as one message, over one connection."""
    require_mosquitto()
    return subprocess.run(
        [
            "mosquitto_pub",
            *_tls_args(port, ca, creds, client_id),
            "-t",
            topic,
            "-l",
            "-q",
            str(qos),
        ],
        input=message,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


class MosquittoSub:
    """A running ``mosquitto_sub -v`` whose output lines are read as they come; killed at exit."""

    def __init__(
        self,
        port: int,
        ca: Path,
        creds: Creds,
        topics: list[str],
        *,
        client_id: str | None = None,
        timeout: int = 30,
    ) -> None:
        require_mosquitto()
        args = ["mosquitto_sub", *_tls_args(port, ca, creds, client_id), "-v", "-W", str(timeout)]
        for topic in topics:
            args += ["-t", topic]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output

    def line(self, timeout: float = WAIT) -> str | None:
        """The next line printed, or None if the process ended or printed nothing in time."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def wait_subscribed(self, publish: Callable[[], None], timeout: float = 5) -> str:
        """Call `publish` until a line arrives (the subscription is then in place); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publish()
            if (line := self.line(0.1)) is not None:
                return line
            if self.process.poll() is not None:
                break
        raise AssertionError(f"mosquitto_sub printed nothing: {self.stop()[1]}")

    def drain(self, quiet: float = QUIET) -> list[str]:
        """Lines printed until nothing more comes for `quiet` seconds."""
        out = []
        while (line := self.line(quiet)) is not None:
            out.append(line)
        return out

    def stop(self) -> tuple[int, str]:
        """End the process; its exit code and stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _out, err = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate()
        self._reader.join(5)
        return self.process.returncode, err

    def __enter__(self) -> MosquittoSub:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


Connect = Callable[
    ..., MqttClient
]  # what the `connect` fixture gives: clients closed after the test

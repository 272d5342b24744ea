"""The broker's persistent sessions and retained messages on disk, across a graceful restart.

The broker keeps every session in memory and adds nothing to the per-message path for
persistence: on a graceful stop it writes one snapshot, and at start it reads it back before its
listeners accept (``EmbeddedBroker``). A snapshot holds, for every persistent session (clean
session 0) of a client with an identity:

* its client id and the principal (role and name) it was made by: a session is only resumed by
  the same principal (``HardenedBroker._initialize_client_session``), so a restored one is too;
* its subscriptions with their QoS;
* its outgoing messages in flight (sent, not acknowledged; resent with DUP on resume, or their
  PUBREL when the PUBREC came) and its queue (QoS 1 and 2 messages waiting for it);
* the packet ids of its incoming QoS 2 messages awaiting their PUBREL (routed once);

and the retained messages.

The file: ``MAGIC``, then a stream of msgpack records, then the SHA-256 of everything before it.
Records: a header map ``{"version": 1, "savedAt": <epoch s>}``; per session
``["s", client id, role, principal, next packet id, [incoming QoS 2 ids]]`` followed by its
``["f", filter, qos]``, ``["o", packet id, topic, qos, payload, retain, released]`` and
``["q", topic, qos, payload, retain]`` records; ``["r", topic, payload, qos]`` per retained
message; ``["e", sessions, messages]`` last. Records are small (one message each), so reading is
bounded by ``MAX_RECORD`` whatever the file's size, and the file holds at most what the broker
held: each session's messages are bounded by its flow limits (``handler.FlowLimits``), which a
file claiming more fails. It is written to a temporary file (mode 0600: payloads may be
sensitive), synced and renamed over the last one, so a crash while saving leaves the previous
snapshot whole. A file that does not verify is moved aside as ``<name>.corrupt`` with one log
line, and the broker starts empty: it never refuses to start over it.

What a SIGKILL loses (PROTOCOL.md, "Delivery guarantees of the cloud broker"): once a snapshot
is loaded, and before the listeners open, it is rewritten without its messages
(``without_messages``; put back whole if the broker then fails to start), so a start after a
crash restores the sessions, subscriptions and retained messages of the last graceful start or
stop, and never replays messages that may have been delivered since.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from broker.acl import Role, valid_filter, valid_topic
from broker.errors import BrokerError
from broker.handler import NODE_FLOW, SERVICE_FLOW, FlowLimits

__all__ = [
    "CorruptSnapshot",
    "Inflight",
    "Queued",
    "Retained",
    "SavedSession",
    "Snapshot",
    "load_snapshot",
    "read_snapshot",
    "rewrite",
    "write_snapshot",
]

log = logging.getLogger(__name__)

MAGIC = b"pybaetyl broker sessions\n"
VERSION = 1
DIGEST = hashlib.sha256
DIGEST_SIZE = 32
# The largest record: one message of the largest packet the broker may accept (256 MiB, the
# ceiling of broker.max_packet_size) with a topic of the largest length (64 KiB) and framing.
MAX_RECORD = 256 * 1024 * 1024 + 128 * 1024
CHUNK = 1024 * 1024
ROLES = {str(role): role for role in Role}


class CorruptSnapshot(BrokerError):
    """The snapshot file does not verify (truncated, altered, another format or version)."""


class Queued(NamedTuple):
    """A message waiting in a session's queue."""

    topic: str
    qos: int
    payload: bytes
    retain: bool


class Inflight(NamedTuple):
    """An outgoing message sent and not yet acknowledged."""

    packet_id: int
    topic: str
    qos: int
    payload: bytes
    retain: bool
    released: bool  # QoS 2 and PUBREC received: PUBREL is resent, not the PUBLISH


class Retained(NamedTuple):
    topic: str
    payload: bytes
    qos: int | None


@dataclass(slots=True)
class SavedSession:
    """One persistent session as the broker held it."""

    client_id: str
    role: Role
    principal: str
    packet_id: int = 0  # the last outgoing packet id used
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    inflight_out: list[Inflight] = field(default_factory=list)
    inflight_in: list[int] = field(default_factory=list)
    queue: list[Queued] = field(default_factory=list)


@dataclass(slots=True)
class Snapshot:
    sessions: list[SavedSession] = field(default_factory=list)
    retained: list[Retained] = field(default_factory=list)
    saved_at: float = 0.0

    @property
    def messages(self) -> int:
        """Messages held for the sessions (queued and in flight)."""
        return sum(len(s.queue) + len(s.inflight_out) for s in self.sessions)

    def without_messages(self) -> Snapshot:
        """The sessions and their subscriptions, and the retained messages; no message held for
        a session, no QoS 2 id (both change as soon as the clients are back)."""
        return Snapshot(
            sessions=[
                SavedSession(s.client_id, s.role, s.principal, s.packet_id, s.subscriptions)
                for s in self.sessions
            ],
            retained=self.retained,
            saved_at=self.saved_at,
        )


# -- writing -------------------------------------------------------------------------------------


def _records(snapshot: Snapshot) -> Iterator[Any]:
    yield {"version": VERSION, "savedAt": snapshot.saved_at}
    for s in snapshot.sessions:
        yield ["s", s.client_id, str(s.role), s.principal, s.packet_id, s.inflight_in]
        for topic_filter, qos in s.subscriptions:
            yield ["f", topic_filter, qos]
        for m in s.inflight_out:
            yield ["o", m.packet_id, m.topic, m.qos, m.payload, m.retain, m.released]
        for q in s.queue:
            yield ["q", q.topic, q.qos, q.payload, q.retain]
    for r in snapshot.retained:
        yield ["r", r.topic, r.payload, r.qos]
    yield ["e", len(snapshot.sessions), snapshot.messages]


def write_snapshot(path: Path, snapshot: Snapshot) -> int:
    """Write ``snapshot`` to ``path`` atomically, mode 0600; returns the bytes written.

    A missing parent directory is made (0700). On any error the previous file is left as it was.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_EXCL, 0o600)
    digest = DIGEST(MAGIC)
    written = 0
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(MAGIC)
            packer = msgpack.Packer(use_bin_type=True)
            buffer = bytearray()
            for record in _records(snapshot):
                buffer += packer.pack(record)
                if len(buffer) >= CHUNK:
                    digest.update(buffer)
                    file.write(buffer)
                    written += len(buffer)
                    buffer.clear()
            digest.update(buffer)
            file.write(buffer)
            file.write(digest.digest())
            written += len(MAGIC) + len(buffer) + DIGEST_SIZE
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return written


# -- reading -------------------------------------------------------------------------------------


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's msgpack stream in chunks, the trailing digest checked once all is read."""
    size = path.stat().st_size
    body = size - len(MAGIC) - DIGEST_SIZE
    if body < 0:
        raise CorruptSnapshot(f"it is {size} bytes long, shorter than any snapshot")
    with path.open("rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            raise CorruptSnapshot("it does not start as a broker snapshot does")
        digest = DIGEST(MAGIC)
        left = body
        while left:
            chunk = file.read(min(CHUNK, left))
            if not chunk:
                raise CorruptSnapshot("it ended while being read")
            left -= len(chunk)
            digest.update(chunk)
            yield chunk
        if file.read(DIGEST_SIZE + 1) != digest.digest():
            raise CorruptSnapshot("its checksum does not match its content")


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CorruptSnapshot(f"{what} is {value!r}, not an integer from {low} to {high}")
    return value


def _text(value: Any, what: str) -> str:
    if type(value) is not str or not value:
        raise CorruptSnapshot(f"{what} is {value!r}, not a non-empty string")
    return value


def _topic(value: Any) -> str:
    topic = _text(value, "a topic")
    if not valid_topic(topic):
        raise CorruptSnapshot(f"{topic!r} is not a valid topic")
    return topic


def _payload(value: Any) -> bytes:
    if type(value) is not bytes:
        raise CorruptSnapshot("a payload is not bytes")
    return value


def _flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise CorruptSnapshot(f"{what} is {value!r}, not a boolean")
    return value


class _Reader:
    """Builds a Snapshot from the records, refusing anything the writer would not write."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.session: SavedSession | None = None
        self.ended = False
        self.retained: set[str] = set()
        self.client_ids: set[str] = set()

    def header(self, record: Any) -> None:
        if not isinstance(record, dict) or record.get("version") != VERSION:
            version = record.get("version") if isinstance(record, dict) else None
            raise CorruptSnapshot(f"its format version is {version!r}, not {VERSION}")
        saved_at = record.get("savedAt")
        if type(saved_at) is not float:
            raise CorruptSnapshot("its header has no time of saving")
        self.snapshot.saved_at = saved_at

    def add(self, record: Any) -> None:
        if self.ended:
            raise CorruptSnapshot("records follow its end")
        if not isinstance(record, list) or not record or type(record[0]) is not str:
            raise CorruptSnapshot("a record is not a tagged list")
        handler = getattr(self, f"_record_{record[0]}", None)
        expected = _ARITY.get(record[0])
        if handler is None or len(record) != expected:
            raise CorruptSnapshot(f"a record {record[0]!r} of {len(record)} fields is unknown")
        handler(*record[1:])

    def _current(self) -> SavedSession:
        if self.session is None:
            raise CorruptSnapshot("a session's record comes before any session")
        return self.session

    def _record_s(
        self, client_id: Any, role: Any, principal: Any, packet_id: Any, inflight_in: Any
    ) -> None:
        client_id = _text(client_id, "a client id")
        if self.retained:
            raise CorruptSnapshot(f"the session {client_id!r} comes after retained messages")
        if client_id in self.client_ids:
            raise CorruptSnapshot(f"the session {client_id!r} appears twice")
        self.client_ids.add(client_id)
        if role not in ROLES:
            raise CorruptSnapshot(f"the role {role!r} of {client_id!r} is unknown")
        if not isinstance(inflight_in, list):
            raise CorruptSnapshot(f"the QoS 2 ids of {client_id!r} are not a list")
        session = SavedSession(
            client_id,
            ROLES[role],
            _text(principal, "a principal"),
            _int(packet_id, 0, 65535, "a packet id"),
            inflight_in=[_int(i, 1, 65535, "a QoS 2 packet id") for i in inflight_in],
        )
        if len(session.inflight_in) > self._flow(session).max_inflight:
            raise CorruptSnapshot(f"{client_id!r} holds more QoS 2 ids than it may")
        self.snapshot.sessions.append(session)
        self.session = session

    @staticmethod
    def _flow(session: SavedSession) -> FlowLimits:
        return SERVICE_FLOW if session.role is Role.SERVICE else NODE_FLOW

    def _record_f(self, topic_filter: Any, qos: Any) -> None:
        topic_filter = _text(topic_filter, "a filter")
        if not valid_filter(topic_filter):
            raise CorruptSnapshot(f"{topic_filter!r} is not a valid filter")
        self._current().subscriptions.append((topic_filter, _int(qos, 0, 2, "a QoS")))

    def _record_o(
        self, packet_id: Any, topic: Any, qos: Any, payload: Any, retain: Any, released: Any
    ) -> None:
        session = self._current()
        message = Inflight(
            _int(packet_id, 1, 65535, "a packet id"),
            _topic(topic),
            _int(qos, 1, 2, "the QoS of a message in flight"),
            _payload(payload),
            _flag(retain, "a retain flag"),
            _flag(released, "a released flag"),
        )
        if len(session.inflight_out) >= self._flow(session).max_inflight:
            raise CorruptSnapshot(f"{session.client_id!r} has more in flight than it may")
        session.inflight_out.append(message)

    def _record_q(self, topic: Any, qos: Any, payload: Any, retain: Any) -> None:
        session = self._current()
        message = Queued(
            _topic(topic),
            _int(qos, 1, 2, "the QoS of a queued message"),
            _payload(payload),
            _flag(retain, "a retain flag"),
        )
        if len(session.queue) >= self._flow(session).queue_limit:
            raise CorruptSnapshot(f"{session.client_id!r} has more queued than it may")
        session.queue.append(message)

    def _record_r(self, topic: Any, payload: Any, qos: Any) -> None:
        topic = _topic(topic)
        if topic in self.retained:
            raise CorruptSnapshot(f"the retained message of {topic!r} appears twice")
        self.retained.add(topic)
        level = None if qos is None else _int(qos, 0, 2, "the QoS of a retained message")
        self.snapshot.retained.append(Retained(topic, _payload(payload), level))
        self.session = None  # retained messages come after every session

    def _record_e(self, sessions: Any, messages: Any) -> None:
        if sessions != len(self.snapshot.sessions) or messages != self.snapshot.messages:
            raise CorruptSnapshot("its end does not count what it holds")
        self.ended = True


_ARITY = {"s": 6, "f": 3, "o": 7, "q": 5, "r": 4, "e": 3}


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot in ``path``; CorruptSnapshot with the reason if it does not verify, OSError
    if it cannot be read. Nothing is returned before the whole file has verified."""
    unpacker = msgpack.Unpacker(
        raw=False, use_list=True, strict_map_key=True, max_buffer_size=MAX_RECORD
    )
    reader = _Reader()
    first = True
    try:
        for chunk in _chunks(path):
            unpacker.feed(chunk)
            for record in unpacker:
                if first:
                    reader.header(record)
                    first = False
                else:
                    reader.add(record)
    except CorruptSnapshot:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # UnicodeDecodeError too
        raise CorruptSnapshot(f"it is not a valid record stream ({type(exc).__name__})") from None
    if not reader.ended:
        raise CorruptSnapshot("it has no end record")
    return reader.snapshot


def load_snapshot(path: Path) -> Snapshot | None:
    """The snapshot to restore at start, None if there is none.

    Never raises for the file's content: a snapshot that does not verify is moved aside as
    ``<name>.corrupt`` (replacing an older one) with one log line, and None is returned.
    """
    if not path.exists():
        return None
    try:
        snapshot = read_snapshot(path)
    except (CorruptSnapshot, OSError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        try:
            os.replace(path, aside)
        except OSError as move:
            log.error(
                "broker sessions file %s cannot be read (%s) nor moved aside (%s); starting "
                "without the sessions it held: remove or fix the file",
                path,
                why,
                move.strerror,
            )
            return None
        log.error(
            "broker sessions file %s is unusable (%s); moved to %s, starting without the "
            "persistent sessions it held",
            path,
            why,
            aside,
        )
        return None
    return snapshot


def rewrite(path: Path, snapshot: Snapshot, *, restoring: bool = False) -> None:
    """Replace the file with ``snapshot``, a failure logged (it only costs what a crash would).

    Used once the broker holds a loaded snapshot in memory, with ``without_messages`` (a start
    after a crash must not deliver them a second time), and with the whole snapshot again
    (``restoring``) when the broker then fails to start: it was never delivered.
    """
    try:
        write_snapshot(path, snapshot)
    except OSError as exc:
        if restoring:
            consequence = f"its {snapshot.messages} messages are lost"
        else:
            consequence = "a crash before the next graceful stop would deliver its messages again"
        log.error("could not rewrite %s (%s): %s", path, exc.strerror or exc, consequence)

"""The snapshot file of persistent sessions: what it keeps, and every way it refuses a bad file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import pytest

from broker import Role
from broker.handler import NODE_FLOW
from broker.snapshot import (
    MAGIC,
    CorruptSnapshot,
    Inflight,
    Queued,
    Retained,
    SavedSession,
    Snapshot,
    read_snapshot,
    write_snapshot,
)


def sample() -> Snapshot:
    return Snapshot(
        sessions=[
            SavedSession(
                "default.node-a",
                Role.NODE,
                "default.node-a",
                packet_id=12,
                subscriptions=[("$baetyl/node/default.node-a/desire", 1)],
                inflight_out=[
                    Inflight(11, "$baetyl/node/default.node-a/desire", 1, b"a", False, False),
                    Inflight(12, "$baetyl/node/default.node-a/desire", 2, b"", False, True),
                ],
                inflight_in=[7],
                queue=[Queued("$baetyl/node/default.node-a/desire", 1, b"\x00\xff", True)],
            ),
            SavedSession("operator:dbg", Role.OPERATOR, "operator:dbg"),
        ],
        retained=[Retained("$baetyl/node/default.node-a/presence", b"{}", 1)],
        saved_at=1700000000.5,
    )


def test_a_snapshot_reads_back_as_written_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "broker" / "sessions.msgpack"
    written = write_snapshot(path, sample())
    assert path.stat().st_size == written
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert read_snapshot(path) == sample()
    assert [p.name for p in path.parent.iterdir()] == ["sessions.msgpack"]  # no temporary left


def test_without_messages_keeps_sessions_subscriptions_and_retained_only() -> None:
    stripped = sample().without_messages()
    assert [s.client_id for s in stripped.sessions] == ["default.node-a", "operator:dbg"]
    first = stripped.sessions[0]
    assert first.subscriptions == [("$baetyl/node/default.node-a/desire", 1)]
    assert (first.queue, first.inflight_out, first.inflight_in) == ([], [], [])
    assert stripped.retained == sample().retained
    assert stripped.messages == 0


def _resealed(body: bytes) -> bytes:
    """A file of ``body`` records with a correct checksum: only the content is wrong."""
    return MAGIC + body + hashlib.sha256(MAGIC + body).digest()


def _records(*records: object) -> bytes:
    header: bytes = msgpack.packb({"version": 1, "savedAt": 1.0})
    return header + b"".join(msgpack.packb(r, use_bin_type=True) for r in records)


SESSION = ["s", "default.node-a", "node", "default.node-a", 0, []]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "shorter than any snapshot"),
        (b"x" * 100, "does not start as a broker snapshot"),
        (_resealed(_records(SESSION)), "no end record"),
        (_resealed(msgpack.packb({"version": 2, "savedAt": 1.0})), "format version is 2"),
        (_resealed(_records(["f", "a/#", 1], ["e", 0, 0])), "before any session"),
        (_resealed(_records(SESSION, ["f", "a/#/b", 1], ["e", 1, 0])), "not a valid filter"),
        (_resealed(_records(SESSION, ["q", "a/+", 1, b"", False], ["e", 1, 1])), "valid topic"),
        (_resealed(_records(SESSION, ["q", "a", 0, b"", False], ["e", 1, 1])), "QoS"),
        (_resealed(_records(SESSION, ["o", 0, "a", 1, b"", False, False], ["e", 1, 1])), "id"),
        (_resealed(_records(SESSION, ["q", "a", 1, "text", False], ["e", 1, 1])), "bytes"),
        (_resealed(_records(["s", "x", "admin", "x", 0, []], ["e", 1, 0])), "role"),
        (_resealed(_records(SESSION, SESSION, ["e", 2, 0])), "appears twice"),
        (_resealed(_records(SESSION, ["e", 1, 5])), "does not count"),
        (_resealed(_records(SESSION, ["e", 1, 0], SESSION)), "follow its end"),
        (_resealed(_records(["z", 1], ["e", 0, 0])), "unknown"),
        (_resealed(_records(SESSION, ["e", 1, 0]) + b"\xc1"), "not a valid record stream"),
    ],
)
def test_a_file_that_does_not_verify_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "sessions.msgpack"
    path.write_bytes(content)
    with pytest.raises(CorruptSnapshot, match=reason):
        read_snapshot(path)


def test_any_altered_byte_or_truncation_fails_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "sessions.msgpack"
    write_snapshot(path, sample())
    good = path.read_bytes()
    for index in (len(MAGIC), len(good) // 2, len(good) - 1):
        altered = bytearray(good)
        altered[index] ^= 0x01
        path.write_bytes(bytes(altered))
        with pytest.raises(CorruptSnapshot):
            read_snapshot(path)
    for length in (len(good) - 1, len(good) // 2, len(MAGIC) + 32):
        path.write_bytes(good[:length])
        with pytest.raises(CorruptSnapshot):
            read_snapshot(path)
    path.write_bytes(good + b"\x00")
    with pytest.raises(CorruptSnapshot):
        read_snapshot(path)


def test_a_queue_longer_than_the_sessions_bound_is_refused(tmp_path: Path) -> None:
    """The file may hold no more than the broker could: a node's queue is bounded."""
    limit = NODE_FLOW.queue_limit
    session = SavedSession(
        "default.node-a",
        Role.NODE,
        "default.node-a",
        queue=[Queued("t", 1, b"", False)] * (limit + 1),
    )
    path = tmp_path / "sessions.msgpack"
    write_snapshot(path, Snapshot(sessions=[session]))
    with pytest.raises(CorruptSnapshot, match="more queued than it may"):
        read_snapshot(path)
    session.queue = session.queue[:limit]
    write_snapshot(path, Snapshot(sessions=[session]))
    assert len(read_snapshot(path).sessions[0].queue) == limit


def test_a_failed_write_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.msgpack"
    write_snapshot(path, sample())
    before = path.read_bytes()
    bad = Snapshot(sessions=[SavedSession("x", Role.NODE, "x", subscriptions=[(object(), 1)])])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        write_snapshot(path, bad)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["sessions.msgpack"]

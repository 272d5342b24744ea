"""The agent's side of the spool against a second connection writing as the node broker does."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.dataplane.spool import Spool
from edge.errors import DataPlaneError
from tests.edge.dataplane.brokerside import BrokerSpool


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[BrokerSpool, Spool]]:
    broker = BrokerSpool(tmp_path / "spool.db")
    agent = Spool(tmp_path / "spool.db")
    yield broker, agent
    agent.close()
    broker.close()


def test_rows_are_read_after_a_cursor_in_id_order_and_in_batches(
    sides: tuple[BrokerSpool, Spool],
) -> None:
    broker, agent = sides
    ids = broker.insert((f"devices/d{n % 3}/t", f"d{n % 3}", b"%d" % n) for n in range(10))
    first = agent.read(0, 4)
    assert [row.id for row in first] == ids[:4]
    assert (first[0].topic, first[0].device, first[0].payload, first[0].qos) == (
        "devices/d0/t", "d0", b"0", 1,
    )  # fmt: skip
    assert [row.id for row in agent.read(first[-1].id, 100)] == ids[4:]
    assert agent.read(ids[-1], 100) == []


def test_a_new_cursor_starts_at_the_end_even_of_an_emptied_log(
    sides: tuple[BrokerSpool, Spool],
) -> None:
    broker, agent = sides
    assert agent.create_cursor("early") == 0
    ids = broker.insert([("a", "d", b"1"), ("a", "d", b"2")])
    agent.delete_through(ids[-1])
    assert broker.ids() == []
    # Ids are never reused (AUTOINCREMENT): the end is the last id given, not the last row.
    assert agent.create_cursor("late") == ids[-1]
    assert agent.create_cursor("late") == ids[-1]  # kept, not moved
    agent.set_cursors({"early": 1})
    assert broker.cursors() == {"early": 1, "late": ids[-1]}
    agent.delete_cursor("early")
    assert broker.cursors() == {"late": ids[-1]}


def test_deletes_go_in_chunks_and_spare_what_follows(sides: tuple[BrokerSpool, Spool]) -> None:
    broker, agent = sides
    ids = broker.insert(("a", "d", b"x") for _ in range(12_000))
    assert agent.delete_through(ids[10_500]) == 10_501
    assert broker.ids() == ids[10_501:]
    assert agent.first() == ids[10_501]


def test_queued_counts_matching_rows_exactly_then_bounded(
    sides: tuple[BrokerSpool, Spool],
) -> None:
    broker, agent = sides
    broker.insert((f"devices/d{n % 2}/t", "d", b"") for n in range(30))
    assert agent.queued(0, "devices/d0/t") == (15, True)
    assert agent.queued(10, "devices/+/t") == (20, True)
    assert agent.queued(0, "devices/d0/t", scan=10) == (5 + 20, False)  # an upper bound


def test_drops_are_read_as_the_broker_counts_them(sides: tuple[BrokerSpool, Spool]) -> None:
    broker, agent = sides
    broker.insert((f"devices/d{n % 2}/t", "d", b"") for n in range(10))
    agent.set_cursors({"even": 0, "all": 4})
    broker.drop_oldest(6, {"even": "devices/d0/t", "all": "devices/#"})
    assert agent.drops() == {"even": 3, "all": 2}


def test_the_agent_reads_while_the_broker_writes(sides: tuple[BrokerSpool, Spool]) -> None:
    """WAL and busy_timeout: neither side fails while the other holds a write."""
    broker, agent = sides
    path = broker.db.execute("PRAGMA database_list").fetchone()[2]
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        writer = BrokerSpool(Path(path))
        try:
            for n in range(200):
                writer.insert((f"t/{n}", "d", b"p") for _ in range(20))
        except BaseException as exc:  # handed to the test
            errors.append(exc)
        finally:
            writer.close()
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = 0
    while not done.is_set() or agent.read(seen, 1):
        rows = agent.read(seen, 500)
        if rows:
            seen = rows[-1].id
            agent.set_cursors({"r": seen})
            agent.delete_through(seen)
    thread.join()
    assert errors == []
    assert seen == 4000
    assert broker.ids() == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "spool.db")
    db.execute("PRAGMA user_version = 2")
    db.close()
    with pytest.raises(DataPlaneError, match="upgrade the agent"):
        Spool(tmp_path / "spool.db")

"""The append-only log on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog import (
    Event,
    NonContiguousAppend,
    Position,
    append_events,
    current_epoch,
    epoch_end_seq,
    events,
    find_by_request_id,
    find_by_request_ids,
    last_position,
    raise_current_epoch,
    read_events,
    truncate_after,
)
from eventlog.schema import metadata
from testsupport.databases import iter_all_events

T0 = dt.datetime(2030, 1, 2, 3, 4, 5, 123456)


def event(seq: int, epoch: int = 1, request_id: str | None = None, **payload: object) -> Event:
    return Event(
        seq=seq,
        epoch=epoch,
        type="test_event",
        payload={"n": seq, **payload},
        request_id=request_id,
        created_at=T0 + dt.timedelta(seconds=seq),
    )


def append(engine: sa.Engine, batch: list[Event]) -> None:
    with engine.begin() as conn:
        append_events(conn, batch)


def count_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())


def test_empty_log(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert last_position(conn) == Position(0, 0)
        assert read_events(conn, 0) == []
        assert epoch_end_seq(conn, 5) == Position(0, 0)
        assert find_by_request_id(conn, "nope") is None


def test_append_round_trips_every_field(engine: sa.Engine) -> None:
    stored = Event(
        1, 7, "test_event", {"text": "héllo ✓ 'quoted' \"x\"", "list": [1, 2]}, "req-1", T0
    )
    append(engine, [stored])
    with engine.connect() as conn:
        assert read_events(conn, 0) == [stored]
        assert last_position(conn) == Position(7, 1)


def test_append_continues_contiguously(engine: sa.Engine) -> None:
    append(engine, [event(1), event(2)])
    append(engine, [event(3), event(4), event(5)])
    append(engine, [])  # an empty batch is a no-op
    with engine.connect() as conn:
        assert [e.seq for e in read_events(conn, 0)] == [1, 2, 3, 4, 5]
        assert last_position(conn) == Position(1, 5)


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([2], id="first-seq-not-1"),
        pytest.param([0], id="seq-0"),
        pytest.param([1, 3], id="gap-inside-batch"),
        pytest.param([1, 1], id="repeat-inside-batch"),
    ],
)
def test_append_to_empty_log_rejects_non_contiguous(engine: sa.Engine, batch: list[int]) -> None:
    with pytest.raises(NonContiguousAppend, match="expected seq"), engine.begin() as conn:
        append_events(conn, [event(s) for s in batch])
    assert count_rows(engine) == 0


@pytest.mark.parametrize("first", [1, 3, 5], ids=["overwrite-start", "overwrite-end", "gap"])
def test_append_after_existing_rejects_overwrite_and_gap(engine: sa.Engine, first: int) -> None:
    append(engine, [event(1), event(2), event(3)])
    with pytest.raises(NonContiguousAppend, match=f"expected seq 4, got {first}"):
        append(engine, [event(first)])
    with engine.connect() as conn:
        assert last_position(conn) == Position(1, 3)
        assert [e.payload for e in read_events(conn, 0)] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_read_events_after_position_in_batches(engine: sa.Engine) -> None:
    append(engine, [event(s) for s in range(1, 12)])
    with engine.connect() as conn:
        assert [e.seq for e in read_events(conn, 0, limit=4)] == [1, 2, 3, 4]
        assert [e.seq for e in read_events(conn, 4, limit=4)] == [5, 6, 7, 8]
        assert [e.seq for e in read_events(conn, 8, limit=4)] == [9, 10, 11]
        assert read_events(conn, 11, limit=4) == []
        assert [e.seq for e in iter_all_events(conn, batch_size=3)] == list(range(1, 12))


def test_read_events_orders_by_seq_whatever_the_insert_order(engine: sa.Engine) -> None:
    # Rows written out of order (bypassing append_events) still come back in seq order.
    rows = [
        {
            "seq": s,
            "epoch": 1,
            "type": "t",
            "payload": "{}",
            "request_id": None,
            "created_at": T0,
        }
        for s in (3, 1, 2)
    ]
    with engine.begin() as conn:
        conn.execute(events.insert(), rows)
    with engine.connect() as conn:
        assert [e.seq for e in read_events(conn, 0)] == [1, 2, 3]


def test_last_position_is_the_highest_seq_with_its_epoch(engine: sa.Engine) -> None:
    append(engine, [event(1, epoch=1), event(2, epoch=1), event(3, epoch=4)])
    with engine.connect() as conn:
        assert last_position(conn) == Position(4, 3)


def test_truncate_after_removes_only_the_tail(engine: sa.Engine) -> None:
    append(engine, [event(s) for s in range(1, 6)])
    with engine.begin() as conn:
        assert truncate_after(conn, 3) == 2
    with engine.begin() as conn:
        assert truncate_after(conn, 3) == 0  # nothing beyond 3 any more
    with engine.connect() as conn:
        assert [e.seq for e in read_events(conn, 0)] == [1, 2, 3]
        assert last_position(conn) == Position(1, 3)
    # The log continues from the truncation point.
    append(engine, [event(4, epoch=2)])
    with engine.connect() as conn:
        assert last_position(conn) == Position(2, 4)


def test_truncate_after_zero_empties_the_log(engine: sa.Engine) -> None:
    append(engine, [event(1), event(2)])
    with engine.begin() as conn:
        assert truncate_after(conn, 0) == 2
    assert count_rows(engine) == 0


def test_truncate_rolls_back_with_its_transaction(engine: sa.Engine) -> None:
    append(engine, [event(1), event(2)])
    with pytest.raises(RuntimeError), engine.begin() as conn:
        truncate_after(conn, 0)
        raise RuntimeError("abort")
    assert count_rows(engine) == 2


def test_epoch_end_seq_finds_where_each_epoch_ends(engine: sa.Engine) -> None:
    epochs = {1: 1, 2: 1, 3: 1, 4: 3, 5: 3, 6: 6}  # seq -> epoch; epochs 2 and 5 never led
    append(engine, [event(seq, epoch=epoch) for seq, epoch in epochs.items()])
    with engine.connect() as conn:
        assert epoch_end_seq(conn, 0) == Position(0, 0)
        assert epoch_end_seq(conn, 1) == Position(1, 3)
        assert epoch_end_seq(conn, 2) == Position(1, 3)
        assert epoch_end_seq(conn, 3) == Position(3, 5)
        assert epoch_end_seq(conn, 5) == Position(3, 5)
        assert epoch_end_seq(conn, 6) == Position(6, 6)
        assert epoch_end_seq(conn, 99) == Position(6, 6)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(0, 3), min_size=0, max_size=40))
def test_epoch_end_seq_agrees_with_a_scan_of_the_log(steps: list[int]) -> None:
    """The binary search against the plain definition, on any log whose epochs never
    decrease (a step of 0 keeps the epoch), for every epoch."""
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    epochs, epoch = [], 1
    for step in steps:
        epoch += step
        epochs.append(epoch)
    if epochs:
        append(engine, [event(1 + i, epoch=e) for i, e in enumerate(epochs)])
    with engine.connect() as conn:
        for asked in range(0, (epochs[-1] if epochs else 0) + 2):
            at = [i for i, e in enumerate(epochs) if e <= asked]
            expected = Position(epochs[at[-1]], 1 + at[-1]) if at else Position(0, 0)
            assert epoch_end_seq(conn, asked) == expected, (epochs, asked)


def test_find_by_request_id(engine: sa.Engine) -> None:
    append(engine, [event(1, request_id="a"), event(2), event(3, request_id="B")])
    with engine.connect() as conn:
        found = find_by_request_id(conn, "B")
        assert found is not None
        assert (found.seq, found.payload) == (3, {"n": 3})
        assert find_by_request_id(conn, "a") is not None
        # Request ids are compared exactly (utf8mb4_bin on MySQL: case matters).
        assert find_by_request_id(conn, "b") is None
        assert find_by_request_id(conn, "A") is None


def test_find_by_request_ids(engine: sa.Engine) -> None:
    ids = [f"r{n}" for n in range(1, 1201)]  # more than one query's worth
    append(engine, [event(n, request_id=ids[n - 1]) for n in range(1, 1201)])
    with engine.connect() as conn:
        found = find_by_request_ids(conn, ["r7", "r1200", "r7", "R7", "nope", *ids[500:1100]])
        assert found["r7"].seq == 7 and found["r1200"].seq == 1200
        assert set(found) == {"r7", "r1200", *ids[500:1100]}
        assert find_by_request_ids(conn, []) == {}


def test_request_id_is_unique(engine: sa.Engine) -> None:
    append(engine, [event(1, request_id="same")])
    with pytest.raises(sa.exc.IntegrityError):
        append(engine, [event(2, request_id="same")])
    assert count_rows(engine) == 1


def test_many_events_without_request_id(engine: sa.Engine) -> None:
    # NULL request ids do not collide with each other.
    append(engine, [event(s) for s in range(1, 4)])
    assert count_rows(engine) == 3


def test_payload_is_stored_canonically(engine: sa.Engine) -> None:
    append(engine, [Event(1, 1, "t", {"b": 1, "a": "é"}, None, T0)])
    with engine.connect() as conn:
        raw = conn.execute(sa.select(events.c.payload)).scalar_one()
    assert raw == '{"a":"\\u00e9","b":1}'


def test_current_epoch_is_at_least_the_last_events_epoch(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert current_epoch(conn) == 0
    append(engine, [event(1, epoch=3)])
    with engine.connect() as conn:
        assert current_epoch(conn) == 3


def test_raise_current_epoch_never_lowers_it(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert raise_current_epoch(conn, 5) is True
        assert raise_current_epoch(conn, 5) is False
        assert raise_current_epoch(conn, 4) is False
    with engine.connect() as conn:
        assert current_epoch(conn) == 5
    with engine.begin() as conn:
        assert raise_current_epoch(conn, 7) is True
    # Survives truncation of the log: it is not derived from the events.
    append(engine, [event(1, epoch=2)])
    with engine.begin() as conn:
        truncate_after(conn, 0)
    with engine.connect() as conn:
        assert current_epoch(conn) == 7

"""The typed events and their codec: the log's rows as the code before typed events wrote
them read back into the same values on both backends and encode to the same stored JSON; a row
that is no event of ours is refused naming its seq, never a KeyError."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

import eventlog
from eventlog import Event
from projections import (
    AccountDeleted,
    AccountRegistered,
    ChatEvent,
    EpochStarted,
    MalformedEvent,
    MessagesAcked,
    MessageSent,
    SessionClosed,
    SessionOpened,
    apply_events,
    decode,
    encode,
)

T0 = dt.datetime(2031, 2, 3, 4, 5, 6)

# (type, payload exactly as the chat service wrote it before typed events, the typed event)
OLD_ROWS: list[tuple[str, dict[str, Any], ChatEvent]] = [
    ("epoch_started", {"replica_index": 0}, EpochStarted(0)),
    (
        "account_registered",
        {"username": "alice", "password_hash": "$argon2id$h"},
        AccountRegistered("alice", "$argon2id$h"),
    ),
    (
        "account_registered",
        {"username": "bob", "password_hash": "h"},
        AccountRegistered("bob", "h"),
    ),
    (
        "session_opened",
        {"session_id": "s1", "account_id": 2, "username": "alice"},
        SessionOpened("s1", 2, "alice"),
    ),
    (
        "message_sent",
        {
            "sender_id": 2,
            "sender": "alice",
            "recipient_id": 3,
            "recipient": "bob",
            "body": 'h\u00e9llo \U0001f600 "quoted"\n',
            "session_id": "s1",
        },
        MessageSent(2, "alice", 3, "bob", 'h\u00e9llo \U0001f600 "quoted"\n', "s1"),
    ),
    # Older rows: a send without its session, an ack without requested_ids and session.
    (
        "message_sent",
        {"sender_id": 3, "sender": "bob", "recipient_id": 2, "recipient": "alice", "body": "x"},
        MessageSent(3, "bob", 2, "alice", "x"),
    ),
    ("messages_acked", {"account_id": 3, "message_ids": [5]}, MessagesAcked(3, (5,))),
    (
        "session_opened",
        {"session_id": "s2", "account_id": 3, "username": "bob", "closes": ["s0"]},
        SessionOpened("s2", 3, "bob", ("s0",)),
    ),
    (
        "messages_acked",
        {"account_id": 2, "message_ids": [6], "requested_ids": [6, 5], "session_id": "s1"},
        MessagesAcked(2, (6,), (6, 5), "s1"),
    ),
    ("session_closed", {"session_id": "s1", "account_id": 2}, SessionClosed("s1", 2)),
    (
        "account_deleted",
        {"account_id": 3, "username": "bob", "session_id": "s2"},
        AccountDeleted(3, "bob", "s2"),
    ),
]


def test_old_rows_read_back_typed_and_encode_to_the_same_json(engine: sa.Engine) -> None:
    rows = [
        Event(seq, 1, type_, payload, f"r{seq}", T0)
        for seq, (type_, payload, _) in enumerate(OLD_ROWS, 1)
    ]
    with engine.begin() as conn:
        eventlog.append_events(conn, rows)
        apply_events(conn, eventlog.read_events(conn, 0, 100))  # every one applies
    with engine.connect() as conn:
        stored = eventlog.read_events(conn, 0, 100)
    assert [decode(e) for e in stored] == [typed for _, _, typed in OLD_ROWS]
    for event, (type_, payload, typed) in zip(stored, OLD_ROWS, strict=True):
        assert encode(typed) == (type_, payload)
        assert eventlog.encode_payload(encode(typed)[1]) == eventlog.stored_payload(event)


@pytest.mark.parametrize(
    ("type_", "payload", "said"),
    [
        ("message_edited", {"body": "x"}, "has an unknown type 'message_edited'"),
        ("message_sent", {"sender_id": 2, "sender": "a", "recipient": "b", "body": "x"},
         "missing required field `recipient_id`"),
        ("session_closed", {"session_id": "s", "account_id": "2"},
         "Expected `int`, got `str` - at `$.account_id`"),
        ("session_closed", {"session_id": "s", "account_id": True}, "Expected `int`, got `bool`"),
        ("messages_acked", {"account_id": 2, "message_ids": "5"}, "at `$.message_ids`"),
        ("account_registered", {"username": 7, "password_hash": "h"},
         "Expected `str`, got `int` - at `$.username`"),
        ("session_opened", {"session_id": "s", "account_id": 2, "closes": "s0"},
         "at `$.closes`"),
    ],
)  # fmt: skip
def test_a_row_that_is_no_event_of_ours_is_refused_naming_its_seq(
    type_: str, payload: dict[str, Any], said: str
) -> None:
    with pytest.raises(MalformedEvent) as refused:
        decode(Event(41, 1, type_, payload, None, T0))
    assert "seq 41" in str(refused.value) and said in str(refused.value)


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="seq 9 has no payload object"):
        decode(Event(9, 1, "epoch_started", [1], None, T0))  # type: ignore[arg-type]

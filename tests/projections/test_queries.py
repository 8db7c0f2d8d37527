"""Reads of the projections against a plain model of the same rows: the history query's two
index ranges, and the account listing's prefix range, give exactly what a whole-table filter
would."""

from __future__ import annotations

import datetime as dt
import fnmatch

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import accounts, messages
from projections.queries import conversation, list_usernames, literal_prefix, unread_by_sender
from replica.chat.validation import like_pattern

T0 = dt.datetime(2030, 5, 6, 7, 8, 9)
ACCOUNTS = [1, 2, 3]
NAMES = {1: "ann", 2: "ben", 3: "cat"}

sent = st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS)), max_size=40)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    log=sent,
    me=st.sampled_from(ACCOUNTS),
    other=st.sampled_from(ACCOUNTS),
    after=st.integers(0, 45),
    up_to=st.integers(0, 45),
    limit=st.integers(1, 12),
    newest_first=st.booleans(),
)
def test_a_history_page_is_the_conversations_next_messages_in_order(
    engine: sa.Engine,
    log: list[tuple[int, int]],
    me: int,
    other: int,
    after: int,
    up_to: int,
    limit: int,
    newest_first: bool,
) -> None:
    rows = [
        {
            "message_id": seq,
            "sender_id": s,
            "sender": NAMES[s],
            "recipient_id": r,
            "recipient": NAMES[r],
            "body": f"m{seq}",
            "sent_at": T0,
            "delivered": seq % 3 == 0,
        }
        for seq, (s, r) in enumerate(log, start=1)
    ]
    with engine.connect() as conn, conn.begin() as transaction:  # rolled back: a clean table
        if rows:
            conn.execute(sa.insert(messages), rows)
        page = conversation(conn, me, other, after, up_to, limit, newest_first=newest_first)
        transaction.rollback()
    matching = [
        r["message_id"]
        for r in rows
        if (r["sender_id"], r["recipient_id"]) in ((me, other), (other, me))
        and after < r["message_id"] <= up_to
    ]
    expected = (matching[::-1] if newest_first else matching)[:limit]
    assert [m.message_id for m in page] == expected
    assert all(m.body == f"m{m.message_id}" for m in page)


usernames = st.lists(st.text("ab_.-z9", min_size=1, max_size=4), unique=True, max_size=25)
patterns = st.text("ab_.-z9*?", max_size=5)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=usernames, pattern=patterns, after=st.text("ab_z", max_size=2), limit=st.integers(1, 8)
)
def test_listing_by_pattern_matches_the_shell_pattern_and_pages_in_order(
    engine: sa.Engine, names: list[str], pattern: str, after: str, limit: int
) -> None:
    with engine.connect() as conn, conn.begin() as transaction:  # rolled back: a clean table
        if names:
            conn.execute(
                sa.insert(accounts),
                [
                    {"account_id": i, "username": n, "password_hash": "h", "created_at": T0}
                    for i, n in enumerate(names, start=1)
                ],
            )
        found = list_usernames(conn, like_pattern(pattern), after, limit)
        transaction.rollback()
    expected = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern or "*") and n > after)
    assert found == expected[:limit]


def test_a_literal_prefix_is_what_every_match_starts_with() -> None:
    assert literal_prefix(like_pattern("al*")) == "al"
    assert literal_prefix(like_pattern("a_b?c*")) == "a_b"  # '_' is literal in usernames
    assert literal_prefix(like_pattern("*al")) == ""
    assert literal_prefix(like_pattern("bob")) == "bob"


EDGES = ["9", "a", "a-", "a.", "a_", "az", "aza", "azz9", "a9z", "b", "z", "zz", "zzzz"]


def test_the_prefix_range_keeps_every_name_at_its_edges(engine: sa.Engine) -> None:
    rows = [
        {"account_id": i, "username": n, "password_hash": "h", "created_at": T0}
        for i, n in enumerate(EDGES, start=1)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(accounts), rows)
        for pattern in ("a*", "az*", "a?", "z*", "zz*", "a_", "9*", "*z", "b"):
            found = list_usernames(conn, like_pattern(pattern), "", 100)
            assert found == sorted(n for n in EDGES if fnmatch.fnmatchcase(n, pattern)), pattern


def test_the_unread_count_stops_one_past_its_cap(engine: sa.Engine) -> None:
    rows = [
        {
            "message_id": seq,
            "sender_id": 1,
            "sender": "ann",
            "recipient_id": 2,
            "recipient": "ben",
            "body": "x",
            "sent_at": T0,
            "delivered": seq == 3,
        }
        for seq in range(1, 9)
    ]

    def count_undelivered(conn: sa.Connection, account_id: int, up_to: int, cap: int) -> int:
        return sum(unread_by_sender(conn, account_id, up_to, cap).values())

    with engine.begin() as conn:
        conn.execute(sa.insert(messages), rows)
        assert unread_by_sender(conn, 2, 8, cap=100) == {"ann": 7}
        assert count_undelivered(conn, 2, 8, cap=100) == 7
        assert count_undelivered(conn, 2, 5, cap=100) == 4  # only what is committed
        assert count_undelivered(conn, 2, 8, cap=5) == 6  # "more than 5"
        assert count_undelivered(conn, 1, 8, cap=5) == 0

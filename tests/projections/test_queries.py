"""Reads of the projections against a plain model of the same rows: the history query's two
index ranges give exactly what the whole-table filter would."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections import messages
from projections.queries import conversation
from tests.conftest import DatabaseFactory

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
)
def test_a_history_page_is_the_conversations_next_messages_in_order(
    databases: DatabaseFactory,
    log: list[tuple[int, int]],
    me: int,
    other: int,
    after: int,
    up_to: int,
    limit: int,
) -> None:
    engine = databases.engine()
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
    with engine.begin() as conn:
        if rows:
            conn.execute(sa.insert(messages), rows)
        page = conversation(conn, me, other, after, up_to, limit)
    expected = [
        r["message_id"]
        for r in rows
        if (r["sender_id"], r["recipient_id"]) in ((me, other), (other, me))
        and after < r["message_id"] <= up_to
    ][:limit]
    assert [m.message_id for m in page] == expected
    assert all(m.body == f"m{m.message_id}" for m in page)

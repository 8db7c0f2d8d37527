"""Writing a log straight into a replica's database, fast: two registered accounts, then
message_sent events between them.

Events go through eventlog.append_events. Their projection rows are written in bulk: applying
them one statement per event (projections.apply_events) costs ~0.2 ms per event on SQLite and
~0.6 ms on MySQL, minutes for a 300k log. The bulk rows are exactly what
projections.statements_for makes for each event, which is checked on every batch here and
against apply_events itself in tests/bench."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

import eventlog
import projections
from eventlog import Event
from projections import EventTypes
from projections.apply import POSITION_NAME, message_row
from replica.chat.passwords import hash_password
from replica.storage.writer import utc_now

EPOCH = 1
SENDER = "seed_sender"
RECIPIENT = "seed_recipient"
SENDER_ID = 1  # an account's id is the seq of the event that registered it
RECIPIENT_ID = 2
ACCOUNTS = 2
PASSWORD = "bench-password"
_FILLER = "lorem ipsum dolor sit amet " * 2


class SeedMismatch(Exception):
    """The bulk rows differ from what the projections make of an event: projections changed,
    and this module must follow."""


def check_message_row(event: Event) -> None:
    """The bulk row (the one the projections' batched apply inserts) is what applying the
    event alone inserts."""
    statements = projections.statements_for(event)
    statement = statements[0] if len(statements) == 1 else None
    if (
        not isinstance(statement, sa.Insert)
        or statement.table is not projections.messages
        or statement.compile().params != message_row(event)
    ):
        raise SeedMismatch(
            f"applying {event.type} now makes {statements!r}, not one messages row "
            f"{message_row(event)!r}"
        )


class LogSeeder:
    """Appends a log of `batch`-event transactions to an empty, migrated database."""

    def __init__(self, engine: sa.Engine, batch: int, created_at: dt.datetime | None = None):
        self._engine = engine
        self._batch = batch
        self._created_at = created_at or utc_now()
        self.last_seq = 0

    def _at(self, seq: int) -> dt.datetime:
        return self._created_at + dt.timedelta(microseconds=seq)

    def _message(self, seq: int) -> Event:
        payload = {
            "sender_id": SENDER_ID,
            "sender": SENDER,
            "recipient_id": RECIPIENT_ID,
            "recipient": RECIPIENT,
            "body": f"seeded message {seq:09d} {_FILLER}",
        }
        return Event(seq, EPOCH, EventTypes.MESSAGE_SENT, payload, f"seed{seq:028d}", self._at(seq))

    def register_accounts(self) -> None:
        password_hash = hash_password(PASSWORD)
        accounts = [
            Event(
                seq,
                EPOCH,
                EventTypes.ACCOUNT_REGISTERED,
                {"username": name, "password_hash": password_hash},
                f"seed{seq:028d}",
                self._at(seq),
            )
            for seq, name in ((SENDER_ID, SENDER), (RECIPIENT_ID, RECIPIENT))
        ]
        with self._engine.begin() as conn:
            eventlog.append_events(conn, accounts)
            projections.apply_events(conn, accounts)
        self.last_seq = ACCOUNTS

    def extend_to(self, last_seq: int) -> None:
        """Append message_sent events until the log ends at `last_seq`."""
        if self.last_seq < ACCOUNTS:
            self.register_accounts()
        position = projections.projection_position
        while self.last_seq < last_seq:
            first = self.last_seq + 1
            last = min(last_seq, first + self._batch - 1)
            events = [self._message(seq) for seq in range(first, last + 1)]
            check_message_row(events[0])
            with self._engine.begin() as conn:
                eventlog.append_events(conn, events)
                conn.execute(projections.messages.insert(), [message_row(e) for e in events])
                conn.execute(
                    position.update()
                    .where(position.c.name == POSITION_NAME)
                    .values(last_applied_seq=events[-1].seq)
                )
            self.last_seq = events[-1].seq

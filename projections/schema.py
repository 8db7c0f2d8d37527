"""Tables the projections write. Every row is derived from events; none is written elsewhere."""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

accounts = sa.Table(
    "accounts",
    metadata,
    # The seq of the event that registered it: a re-registered name is a different account.
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("username", sa.String(32), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("username", name="uq_accounts_username"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_sessions_account_id", "account_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

messages = sa.Table(
    "messages",
    metadata,
    # The seq of the event that sent it.
    sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sender_id", sa.BigInteger, nullable=False),
    sa.Column("sender", sa.String(32), nullable=False),
    sa.Column("recipient_id", sa.BigInteger, nullable=False),
    sa.Column("recipient", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("sent_at", Timestamp, nullable=False),
    sa.Column("delivered", sa.Boolean, nullable=False),
    sa.Index("ix_messages_inbox", "recipient_id", "delivered", "message_id"),
    sa.Index("ix_messages_conversation", "sender_id", "recipient_id", "message_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# One row per membership event (projections/events.py), so that the membership in force --
# the latest row's -- is one query away. `kind`: "added", "promoted" or "removed";
# `membership`: the event's members and removed indexes, as canonical JSON
# ({"members": [{"index": 0, "address": "h:1", "voter": true}, ...], "removed": [1]}).
membership_changes = sa.Table(
    "membership_changes",
    metadata,
    # The seq of the membership event.
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("replica_index", sa.Integer, nullable=False),
    sa.Column("membership", sa.Text, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# One row: the seq of the last event applied to the tables above, written in the same
# transaction as the changes that event caused.
projection_position = sa.Table(
    "projection_position",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("last_applied_seq", sa.BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# How to take back what applying an event did, for the events whose inverse their payload
# alone does not give (a session or an account ended: the rows it removed), so that a
# truncated tail costs what it holds, not a rebuild of the whole log. Not a projection: each
# replica's own bookkeeping, kept for the last UNDO_WINDOW applied events, never compared.
projection_undo = sa.Table(
    "projection_undo",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("payload", sa.Text, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# One row, "horizon": undo information is complete for every applied event above this seq.
projection_undo_state = sa.Table(
    "projection_undo_state",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

PROJECTION_TABLES = (accounts, sessions, messages, membership_changes)

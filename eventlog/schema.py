"""The `events` table. The migrations in `migrations/` are the schema's history; this is its
current shape, and a test proves the two agree."""

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()

# Microsecond precision on MySQL (its DATETIME defaults to whole seconds).
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")

events = sa.Table(
    "events",
    metadata,
    # Assigned by the single writer: contiguous, never an auto-increment (which can leave gaps).
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    # Client-generated idempotency key; NULL for events the cluster makes itself.
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.UniqueConstraint("request_id", name="uq_events_request_id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# Durable facts about the log kept beside it, e.g. the highest epoch this replica has seen
# ("current_epoch", Raft's currentTerm): a replica refuses primaries and candidates of older
# epochs even after a restart.
log_state = sa.Table(
    "log_state",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

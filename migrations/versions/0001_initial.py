"""Initial schema: the event log and the chat projections.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")
MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("request_id", name="uq_events_request_id"),
        **MYSQL,
    )
    op.create_table(
        "accounts",
        sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.UniqueConstraint("username", name="uq_accounts_username"),
        **MYSQL,
    )
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_sessions_account_id", "sessions", ["account_id"])
    op.create_table(
        "messages",
        sa.Column("message_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("sender_id", sa.BigInteger, nullable=False),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("recipient_id", sa.BigInteger, nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("sent_at", Timestamp, nullable=False),
        sa.Column("delivered", sa.Boolean, nullable=False),
        **MYSQL,
    )
    op.create_index("ix_messages_inbox", "messages", ["recipient_id", "delivered", "message_id"])
    op.create_index(
        "ix_messages_conversation", "messages", ["sender_id", "recipient_id", "message_id"]
    )
    op.create_table(
        "projection_position",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("last_applied_seq", sa.BigInteger, nullable=False),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("projection_position")
    op.drop_table("messages")
    op.drop_table("sessions")
    op.drop_table("accounts")
    op.drop_table("events")

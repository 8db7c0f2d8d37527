"""Undo information for the projections, so that truncating a divergent tail costs the tail.

The horizon starts at the projections' current position: the events applied before this
migration have no undo information, and a truncation below it rebuilds as before.

Revision ID: 0003_projection_undo
Revises: 0002_log_state
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_projection_undo"
down_revision: str | None = "0002_log_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "projection_undo",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("payload", sa.Text, nullable=False),
        **_TABLE_OPTIONS,
    )
    state = op.create_table(
        "projection_undo_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
        **_TABLE_OPTIONS,
    )
    position = (
        op.get_bind()
        .execute(sa.text("SELECT last_applied_seq FROM projection_position WHERE name = 'chat'"))
        .scalar()
    )
    op.bulk_insert(state, [{"name": "horizon", "value": int(position or 0)}])


def downgrade() -> None:
    op.drop_table("projection_undo_state")
    op.drop_table("projection_undo")

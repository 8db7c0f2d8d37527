"""The membership_changes projection: one row per membership event (member_added,
member_promoted, member_removed), so that the membership in force is the latest row's.

No log written before this revision holds a membership event, so the table starts empty and
the projections need no rebuild. (Downgrading drops it: code older than this revision cannot
read a log that holds membership events anyway -- it stops on them as malformed.)

Revision ID: 0004_membership_changes
Revises: 0003_projection_undo
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_membership_changes"
down_revision: str | None = "0003_projection_undo"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE_OPTIONS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "membership_changes",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("replica_index", sa.Integer, nullable=False),
        sa.Column("membership", sa.Text, nullable=False),
        **_TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("membership_changes")

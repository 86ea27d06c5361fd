"""events: the outbox of live events, numbered per user

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Money as the API writes it: two decimals, or every significant digit of a sub-cent amount ("0.035").
MONEY_TEXT = """
CREATE FUNCTION money_text(amount numeric) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT CASE WHEN amount = round(amount, 2) THEN round(amount, 2)::text ELSE trim_scale(amount)::text END $$
"""


def upgrade() -> None:
    op.add_column("balances", sa.Column("last_event_id", sa.BigInteger(), server_default="0", nullable=False))
    op.create_table(
        "events",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("type IN ('trade.updated', 'balance.updated')", name=op.f("ck_events_type_known")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_events_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"], unique=False)
    op.execute(MONEY_TEXT)


def downgrade() -> None:
    op.execute("DROP FUNCTION money_text(numeric)")
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_table("events")
    op.drop_column("balances", "last_event_id")

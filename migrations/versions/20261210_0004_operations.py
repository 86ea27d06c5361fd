"""operations: adjustments in the ledger (kind, reason, actor) and the append-only trade history

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 09:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_BEFORE = "'pre_credit', 'credit', 'reversal', 'debit', 'refund'"

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION trade_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'trade_history is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END;
$$
"""


def upgrade() -> None:
    op.add_column("ledger_entries", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("ledger_entries", sa.Column("actor", sa.String(length=128), nullable=True))
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", type_="check")
    op.create_check_constraint(
        op.f("ck_ledger_entries_kind_known"), "ledger_entries", f"kind IN ({KINDS_BEFORE}, 'adjustment')"
    )
    op.create_check_constraint(
        op.f("ck_ledger_entries_adjustment_accounted"),
        "ledger_entries",
        "kind <> 'adjustment' OR (reason IS NOT NULL AND actor IS NOT NULL AND trade_id IS NULL)",
    )
    op.create_table(
        "trade_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("trade_id", sa.UUID(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('resolved')", name=op.f("ck_trade_history_action_known")),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_trade_history_trade_id_trades")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trade_history")),
    )
    op.create_index("ix_trade_history_trade_id_id", "trade_history", ["trade_id", "id"], unique=False)
    # Like the ledger, the history is append-only: what a person decided stays on record.
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(
        "CREATE TRIGGER trade_history_append_only BEFORE UPDATE OR DELETE ON trade_history "
        "FOR EACH ROW EXECUTE FUNCTION trade_history_append_only()"
    )


def downgrade() -> None:
    # Refused while adjustments exist (the kind check below): the ledger is append-only, so they cannot be dropped.
    op.execute("DROP TRIGGER IF EXISTS trade_history_append_only ON trade_history")
    op.execute("DROP FUNCTION IF EXISTS trade_history_append_only()")
    op.drop_index("ix_trade_history_trade_id_id", table_name="trade_history")
    op.drop_table("trade_history")
    op.drop_constraint(op.f("ck_ledger_entries_adjustment_accounted"), "ledger_entries", type_="check")
    op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", type_="check")
    op.create_check_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", f"kind IN ({KINDS_BEFORE})")
    op.drop_column("ledger_entries", "actor")
    op.drop_column("ledger_entries", "reason")

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 15:17:35.788473+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_FUNCTION = """
CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("steam_id", sa.String(length=17), nullable=False),
        sa.Column("trade_url", sa.Text(), nullable=False),
        sa.Column("client_data", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("steam_id ~ '^76561\\d{12}$'", name=op.f("ck_users_steam_id_format")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("steam_id", name=op.f("uq_users_steam_id")),
    )
    op.create_table(
        "balances",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("available", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_balances_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_balances")),
    )
    op.create_table(
        "trades",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("assetpay_id", sa.String(length=64), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("user_id", sa.String(length=128), nullable=True),
        sa.Column("client_steam_id", sa.String(length=32), nullable=True),
        sa.Column("external_client_user_id", sa.String(length=128), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("game", sa.String(length=16), server_default="730", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total_price", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("pre_credit", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("pending_credit", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("authorized_amount", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("approved_amount", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("posted", sa.Numeric(precision=24, scale=8), server_default="0", nullable=False),
        sa.Column("items", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False),
        sa.Column("is_instant", sa.Boolean(), nullable=True),
        sa.Column("error", sa.String(length=64), nullable=True),
        sa.Column("hold_end_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("needs_review", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "status IN ('initiated', 'pending', 'active', 'hold', "
            "'completed', 'failed', 'canceled', 'declined', 'reverted')",
            name=op.f("ck_trades_status_known"),
        ),
        sa.CheckConstraint("type IN ('deposit', 'withdraw')", name=op.f("ck_trades_type_known")),
        sa.CheckConstraint("approved_amount IS NULL OR approved_amount > 0", name=op.f("ck_trades_approved_positive")),
        sa.CheckConstraint(
            "authorized_amount IS NULL OR authorized_amount > 0", name=op.f("ck_trades_authorized_positive")
        ),
        sa.CheckConstraint("needs_review OR review_reason IS NULL", name=op.f("ck_trades_review_reason_needs_flag")),
        sa.CheckConstraint(
            "total_price >= 0 AND pre_credit >= 0 AND pending_credit >= 0",
            name=op.f("ck_trades_amounts_positive"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trades_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
        sa.UniqueConstraint("assetpay_id", name=op.f("uq_trades_assetpay_id")),
        sa.UniqueConstraint("external_id", name=op.f("uq_trades_external_id")),
    )
    op.create_index(
        "ix_trades_needs_review",
        "trades",
        ["needs_review"],
        unique=False,
        postgresql_where=sa.text("needs_review"),
    )
    op.create_index(
        "ix_trades_user_created",
        "trades",
        ["user_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_table(
        "approval_verdicts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("subject", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("trade_id", sa.UUID(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=24, scale=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "subject IN ('trade', 'crypto_withdrawal')", name=op.f("ck_approval_verdicts_subject_known")
        ),
        sa.CheckConstraint(
            "verdict = 'approve' OR reason IS NOT NULL", name=op.f("ck_approval_verdicts_reject_has_reason")
        ),
        sa.CheckConstraint("verdict IN ('approve', 'reject')", name=op.f("ck_approval_verdicts_verdict_known")),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_approval_verdicts_trade_id_trades")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_verdicts")),
        sa.UniqueConstraint("subject", "subject_id", name=op.f("uq_approval_verdicts_subject")),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("trade_id", sa.UUID(), nullable=True),
        sa.Column("amount", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("balance_after", sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind IN ('pre_credit', 'credit', 'reversal', 'debit', 'refund')",
            name=op.f("ck_ledger_entries_kind_known"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_entries_amount_nonzero")),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_ledger_entries_trade_id_trades")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ledger_entries_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index(op.f("ix_ledger_entries_trade_id"), "ledger_entries", ["trade_id"], unique=False)
    op.create_index(
        "ix_ledger_entries_user_id_id",
        "ledger_entries",
        ["user_id", sa.literal_column("id DESC")],
        unique=False,
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("delivery_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("subject_id", sa.String(length=128), nullable=True),
        sa.Column("trade_id", sa.UUID(), nullable=True),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_webhook_deliveries_trade_id_trades")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_webhook_deliveries_delivery_id")),
    )
    op.create_index(op.f("ix_webhook_deliveries_subject_id"), "webhook_deliveries", ["subject_id"], unique=False)
    # The ledger is append-only: corrections are new entries, never edits.
    op.execute(APPEND_ONLY_FUNCTION)
    op.execute(
        "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
        "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
    op.execute("DROP FUNCTION IF EXISTS ledger_entries_append_only()")
    op.drop_index(op.f("ix_webhook_deliveries_subject_id"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_ledger_entries_user_id_id", table_name="ledger_entries")
    op.drop_index(op.f("ix_ledger_entries_trade_id"), table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_table("approval_verdicts")
    op.drop_index("ix_trades_user_created", table_name="trades")
    op.drop_index("ix_trades_needs_review", table_name="trades", postgresql_where=sa.text("needs_review"))
    op.drop_table("trades")
    op.drop_table("balances")
    op.drop_table("users")

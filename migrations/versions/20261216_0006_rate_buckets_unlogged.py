"""rate buckets unlogged: a take no longer waits for a WAL flush

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16 09:00:00+00:00

Every catalog request takes tokens before AssetPay is asked; on a logged table each take commits a WAL record and
waits for it to reach the disk (~0.5 ms here, on every request). The buckets are soft state: a missing row is a
full bucket, so losing them (PostgreSQL truncates an unlogged table after a crash, and a standby has none of its
rows) only hands out at most one burst again, which AssetPay's own 429 drains (README, Rate limits).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE rate_buckets SET UNLOGGED")


def downgrade() -> None:
    op.execute("ALTER TABLE rate_buckets SET LOGGED")

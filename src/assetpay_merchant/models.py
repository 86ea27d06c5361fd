"""Every table, imported in one place so Alembic and the tests see the whole schema."""

from assetpay_merchant.db import Base
from assetpay_merchant.idempotency import IdempotencyKey
from assetpay_merchant.ledger.models import ApprovalVerdict, Balance, LedgerEntry
from assetpay_merchant.trades.models import Trade
from assetpay_merchant.users.models import User
from assetpay_merchant.webhooks.models import WebhookDelivery

__all__ = [
    "ApprovalVerdict",
    "Balance",
    "Base",
    "IdempotencyKey",
    "LedgerEntry",
    "Trade",
    "User",
    "WebhookDelivery",
]

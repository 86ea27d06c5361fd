"""Everything that talks to AssetPay: the client, client tokens, and the callback signature check."""

from assetpay_merchant.gateway.client import AssetPayClient, RetryPolicy, create_http_client
from assetpay_merchant.gateway.errors import REFUSAL_KEYS, AssetPayError, ErrorKey, OutcomeUnknown
from assetpay_merchant.gateway.models import (
    CancelledItem,
    CancelResult,
    Collateral,
    DepositItem,
    Inventory,
    Item,
    ItemOffer,
    LinkedIdentity,
    MarketPage,
    Trade,
    VerificationLinked,
    VerificationProcess,
    VerificationStarted,
    VerificationStatus,
    WithdrawItem,
)
from assetpay_merchant.gateway.tokens import ClientIdentity, ClientToken, mint_client_token

__all__ = [
    "REFUSAL_KEYS",
    "AssetPayClient",
    "AssetPayError",
    "CancelResult",
    "CancelledItem",
    "ClientIdentity",
    "ClientToken",
    "Collateral",
    "DepositItem",
    "ErrorKey",
    "Inventory",
    "Item",
    "ItemOffer",
    "LinkedIdentity",
    "MarketPage",
    "OutcomeUnknown",
    "RetryPolicy",
    "Trade",
    "VerificationLinked",
    "VerificationProcess",
    "VerificationStarted",
    "VerificationStatus",
    "WithdrawItem",
    "create_http_client",
    "mint_client_token",
]

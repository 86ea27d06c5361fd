"""Identity verification, proxied to AssetPay with the user's client token.

A verified user (level 1, PictureID) gets a much higher instant-credit cap per deposit. Nothing here is stored:
AssetPay keeps the process and the identity, and every answer is its own. The user is looked up exactly as the
catalog does it, so an unregistered user gets the same USER_NOT_FOUND.
"""

from __future__ import annotations

from assetpay_merchant.core.errors import Conflict
from assetpay_merchant.gateway import AssetPayClient, VerificationLinked, VerificationStarted, VerificationStatus
from assetpay_merchant.services.users import identity
from assetpay_merchant.store.database import Database

EMAIL_REQUIRED = "Linking goes by the account's email: start a verification with an email first"


async def status(*, database: Database, assetpay: AssetPayClient, user_id: str) -> VerificationStatus:
    """The user's verification level, email, latest process and linked identity, as AssetPay knows them."""
    return await assetpay.verification_status(await identity(database, user_id))


async def start(
    *, database: Database, assetpay: AssetPayClient, user_id: str, email: str | None
) -> VerificationStarted:
    """Start a verification; the user opens the capture URL. `email` is kept by AssetPay for linking later."""
    return await assetpay.start_verification(await identity(database, user_id), email=email)


async def link(*, database: Database, assetpay: AssetPayClient, user_id: str) -> VerificationLinked:
    """Link the account to a verified identity with the same email.

    AssetPay names none of its refusals to link, so the one the user can fix (no email on the account) is asked
    about first: the answer then says what to do instead of a bare refusal.
    """
    user = await identity(database, user_id)
    if not (await assetpay.verification_status(user)).email:
        raise Conflict(EMAIL_REQUIRED, key="VERIFICATION_EMAIL_REQUIRED")
    return await assetpay.link_verification(user)

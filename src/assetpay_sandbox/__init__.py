"""The built-in AssetPay sandbox: a simulator of the gateway that stands in for AssetPay in development.

It speaks AssetPay's real wire format (paths, envelope, client tokens, signed callbacks, the withdrawal approval
protocol), so the same client code runs against it and against production. See `create_sandbox_app`.
"""

from assetpay_sandbox.app import create_sandbox_app, sandbox_of
from assetpay_sandbox.driver import Sandbox

__all__ = ["Sandbox", "create_sandbox_app", "sandbox_of"]

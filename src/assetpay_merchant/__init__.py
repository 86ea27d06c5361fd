"""AssetPay merchant backend."""

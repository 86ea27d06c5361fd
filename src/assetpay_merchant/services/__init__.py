"""Use cases: settlement (the one way AssetPay's word moves money), callback intake, trading, users, catalog.

Each takes a unit of work from its caller, or opens its own where a use case is several transactions (trading
never holds one open while AssetPay is called). None of them knows HTTP.
"""

"""The pure core: money, the trade vocabulary, the ledger policy and the error base. It imports no framework."""

"""Communication: the per-method formulas, wire dtypes, the ledger of bytes sent, and the paper's reference figures."""

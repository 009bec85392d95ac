"""The billing ledger: integer micro-USD, usage sessions, double-entry postings."""

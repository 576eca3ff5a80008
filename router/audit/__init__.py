"""Tamper-evident audit trail: append-only, hash-chained records (docs/DESIGN.md Part 7)."""

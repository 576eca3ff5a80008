"""Encrypted payload capture for drift analysis and debugging, with retention."""

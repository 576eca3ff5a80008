"""Operator commands (disaster recovery); not on the request path."""

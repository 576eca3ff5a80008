"""Observability: Prometheus metrics, SLO tooling (no gRPC imports)."""

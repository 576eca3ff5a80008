"""Observability and quality, pure Python (no gRPC, no backends).

metrics (Prometheus series, bounded labels), quality (online data-quality
checks and the training profiles they use), drift (sliding-window PSI and its
training reference), slo (``inferline slo``: SLIs and error budgets from a
scrape), tracing (OpenTelemetry provider and exporters), profile (the profile
builders model builds call today).
"""

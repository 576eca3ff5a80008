"""Release safety: the registry of immutable model versions, aliases, and the
release controls built on it (canary, A/B, shadow). No grpc imports here: the
admin servicer (router/transport/admin.py) adapts it to gRPC; SQLite and
Triton's repository API are behind protocols implemented in router/backends.
"""

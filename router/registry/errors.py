"""Registry errors: one class, a machine-readable reason, a public message.

Every way a registration can fail has its own ``reason`` (the admin API and the
CLI print it first), so an ML engineer knows what to fix without reading logs.
"""

from __future__ import annotations

from router.errors import Code, InferlineError

# reason -> status code; anything unlisted is FAILED_PRECONDITION.
_CODES = {
    "not_found": Code.NOT_FOUND,
    "invalid_argument": Code.INVALID_ARGUMENT,
    "load_failed": Code.UNAVAILABLE,
    "unload_failed": Code.UNAVAILABLE,
}

REASONS = frozenset(
    {
        "not_found",  # no such model/version directory or registry entry
        "invalid_argument",  # malformed request (alias name, weight...)
        "metadata_invalid",  # metadata.json missing or not the metadata contract
        "config_missing",  # no config.pbtxt next to the versions
        "config_invalid",  # config.pbtxt does not parse with Triton's schema
        "config_mismatch",  # config.pbtxt disagrees with metadata (tensors, dims, name)
        "artifact_checksum",  # artifact bytes differ from metadata's sha256
        "feature_not_in_view",  # a Feast feature the version needs is not in its view
        "schema_hash_mismatch",  # the version's schema hash != the feature view's
        "version_immutable",  # the version exists with a different artifact
        "load_failed",  # Triton refused to load the version
        "unload_failed",
        "warmup_failed",  # warmup inference failed or returned garbage
        "alias_target",  # an alias would point at an unregistered version
        "release_conflict",  # e.g. a canary already running for the model
    }
)


class RegistrationError(InferlineError):
    """A registry operation refused; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}", code=_CODES.get(reason, Code.FAILED_PRECONDITION))
        self.reason = reason

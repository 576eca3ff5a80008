"""structlog JSON logging with per-request context.

Request-scoped fields (request_id, trace_id, tenant, model, version, arm) are
bound with ``structlog.contextvars`` by the transport and appear on every line
logged while serving that request. Log event names plus key-values; never
tensors, feature values, credentials or PII.
"""

from __future__ import annotations

import logging
import sys

import structlog

from router.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries using stdlib logging (feast, grpc) go to the same stream.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]

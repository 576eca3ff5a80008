"""structlog JSON logging with per-request context.

Request-scoped fields (request_id, trace_id, tenant, model, version, arm) are
bound with ``structlog.contextvars`` by the transport and appear on every line
logged while serving that request. Log event names plus key-values; never
tensors, feature values, credentials or PII.

Lines are buffered and written every ``log.flush_interval_ms`` (and at once for
errors and at shutdown): a write() per line cost ~70 us of router CPU per
request here, more than any pipeline stage but inference (docs/benchmarks.md).
A crash loses at most one interval of info lines, never an error line.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import threading
from typing import IO, Any

import structlog

from router.settings import LogSettings


class _BufferedLogger:
    """structlog logger writing into a buffered stream: no flush per line,
    except for error lines."""

    def __init__(self, stream: IO[str], lock: threading.Lock) -> None:
        self._stream = stream
        self._lock = lock

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")

    def err(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = msg
    error = critical = exception = fatal = err


class LogSink:
    """The process's log stream and its periodic flush (owned by the app)."""

    def __init__(self, flush_interval_s: float) -> None:
        self.interval_s = flush_interval_s
        self._lock = threading.Lock()
        self.stream: IO[str] = (
            open(sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
            if flush_interval_s > 0
            else sys.stderr
        )
        atexit.register(self.flush)

    def logger(self, *_args: Any) -> _BufferedLogger:
        return _BufferedLogger(self.stream, self._lock)

    def flush(self) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    async def run(self) -> None:
        """Flush every interval until cancelled (then once more)."""
        if self.interval_s <= 0:
            return
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.flush()
        finally:
            self.flush()


def configure_logging(settings: LogSettings) -> LogSink:
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    sink = LogSink(settings.flush_interval_ms / 1000)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=sink.logger,
        cache_logger_on_first_use=True,
    )
    # Libraries using stdlib logging (feast, grpc) go to the same stream.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
    return sink


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]

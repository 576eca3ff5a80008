"""structlog JSON logging with per-request context.

Request-scoped fields (request_id, trace_id, tenant, model, version, arm) are
bound with ``bind_request`` by the transport and the pipeline and appear on every
line logged while serving that request. They live in one context variable
holding one dict, replaced (never mutated) on each bind, so tasks started during
a request see its fields but never add to them: structlog's own contextvars
module keeps one variable per key and copies the whole context to read them,
~3% of the router's samples per request under py-spy (docs/benchmarks.md).
Log event names plus key-values; never tensors, feature values, credentials or
PII.

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
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any

import orjson
import structlog

from router.settings import LogSettings

_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_request: ContextVar[Mapping[str, Any]] = ContextVar("inferline_request_log", default=_NO_FIELDS)


def clear_request() -> None:
    """Start a request's log context (the transport, before anything binds)."""
    _request.set(_NO_FIELDS)


def bind_request(**fields: Any) -> None:
    """Add ``fields`` to the current request's log context."""
    _request.set({**_request.get(), **fields})


def request_fields() -> Mapping[str, Any]:
    """The current request's log context (read-only)."""
    return _request.get()


def merge_request(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the request's fields on every line (the line's own
    keys win)."""
    fields = _request.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


def _fallback(obj: Any) -> str:
    return repr(obj)


def _dumps(obj: Any, **_kw: Any) -> str:
    """orjson: ~10x cheaper than the stdlib encoder for a request's log line."""
    return orjson.dumps(obj, default=_fallback, option=_ORJSON_OPTS).decode()


class UtcStamper:
    """``timestamp`` as ISO 8601 UTC with microseconds ("...T15:00:00.123456Z"),
    the format of structlog's ``TimeStamper(fmt="iso", utc=True)``; the date and
    time are formatted once per second, not per line (a third of its cost)."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict["timestamp"] = self.stamp(time.time())
        return event_dict

    def stamp(self, now: float) -> str:
        """``now`` (a ``time.time()``) in the line format."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


class _BufferedLogger:
    """structlog logger writing into a buffered stream: no flush per line,
    except for error lines. Request lines waiting to be rendered go first, so
    the stream keeps the order in which lines were logged."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        sink = self._sink
        with sink.lock:
            sink.render_deferred()
            sink.stream.write(message + "\n")

    def err(self, message: str) -> None:
        sink = self._sink
        with sink.lock:
            sink.render_deferred()
            sink.stream.write(message + "\n")
            sink.stream.flush()

    log = debug = info = warn = warning = msg
    error = critical = exception = fatal = err


class LogSink:
    """The process's log stream and its periodic flush (owned by the app).

    With a flush interval, each request's ``rpc.done`` line is kept as its
    fields and time, and rendered (JSON) with the others waiting when the stream
    is flushed or any other line is written: rendering lines in a row, with the
    encoder and the stream warm, costs less than rendering each between
    requests, after they have left the CPU's caches. Lines still reach the stream in the order they
    were logged, with the time they were logged; what a crash loses is what the
    buffered stream loses anyway (one interval)."""

    def __init__(self, flush_interval_s: float) -> None:
        self.interval_s = flush_interval_s
        self.lock = threading.Lock()
        self.stamper = UtcStamper()
        self._deferred: list[tuple[float, dict[str, Any]]] = []
        self.stream: IO[str] = (
            open(sys.stderr.fileno(), "w", buffering=1 << 16, closefd=False, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
            if flush_interval_s > 0
            else sys.stderr
        )
        atexit.register(self.flush)

    def logger(self, *_args: Any) -> _BufferedLogger:
        return _BufferedLogger(self)

    def request_line(self, event: dict[str, Any]) -> None:
        """A request's ``rpc.done`` line (``event`` is not changed afterwards)."""
        if self.interval_s > 0:
            self._deferred.append((time.time(), event))
            return
        event["timestamp"] = self.stamper.stamp(time.time())
        with self.lock:
            self.stream.write(_dumps(event) + "\n")

    def render_deferred(self) -> None:
        """Write the waiting request lines (the caller holds ``lock``)."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        stamp, write = self.stamper.stamp, self.stream.write
        for at, event in deferred:
            event["timestamp"] = stamp(at)
            write(_dumps(event) + "\n")

    def flush(self) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.render_deferred()
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


_rpc_log = structlog.get_logger("router.rpc")
_rpc_line: Callable[[dict[str, Any]], None] | None = None


def log_request_done(ctx: Mapping[str, Any], **fields: Any) -> None:
    """The request's one ``rpc.done`` line: ``ctx`` (the request's fields,
    already read by the caller for the metrics) plus ``fields``.

    With JSON output at info level the line is rendered here directly: the same
    keys and encoding as through structlog's processor chain, which cost ~7% of
    the router's CPU per request for this one line (docs/benchmarks.md)."""
    if _rpc_line is None:
        _rpc_log.info("rpc.done", **fields)
        return
    _rpc_line({**ctx, **fields, "event": "rpc.done", "level": "info"})


def configure_logging(settings: LogSettings) -> LogSink:
    global _rpc_line
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if settings.json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    sink = LogSink(settings.flush_interval_ms / 1000)
    stamper = sink.stamper
    _rpc_line = sink.request_line if settings.json_output and level <= logging.INFO else None
    structlog.configure(
        processors=[
            merge_request,
            structlog.processors.add_log_level,
            stamper,
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

"""Log lines: the request line's direct rendering matches structlog's chain."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
import structlog

from router import logging as router_logging
from router.settings import LogSettings


@pytest.fixture(autouse=True)
def _restore_structlog() -> Any:
    """Each test here points structlog at a stream pytest closes after it: put
    the previous configuration back, or a later test's error line (flushed at
    once) would write to a closed file."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _lines(capfd: pytest.CaptureFixture[str], sink: router_logging.LogSink) -> list[dict[str, Any]]:
    sink.flush()
    err = capfd.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_request_line_has_the_keys_and_values_of_a_structlog_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    sink = router_logging.configure_logging(LogSettings())
    router_logging.clear_request()
    router_logging.bind_request(request_id="r1", tenant="demo")
    router_logging.bind_request(stages_us={"total": 5}, degraded_reasons=[])
    ctx = router_logging.request_fields()
    router_logging.log_request_done(ctx, method="/m", status="OK", duration_ms=0.25)
    structlog.get_logger("router.rpc").info("rpc.done", method="/m", status="OK", duration_ms=0.25)
    direct, chained = _lines(capfd, sink)
    assert direct.pop("timestamp") <= chained.pop("timestamp")
    assert direct == chained
    assert direct["event"] == "rpc.done" and direct["stages_us"] == {"total": 5}


def test_utc_stamper_writes_iso_utc_with_microseconds() -> None:
    event = router_logging.UtcStamper()(None, "info", {})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])


def test_request_line_falls_back_to_structlog_below_info(
    capfd: pytest.CaptureFixture[str],
) -> None:
    sink = router_logging.configure_logging(LogSettings(level="warning"))
    router_logging.log_request_done({}, method="/m", status="OK", duration_ms=0.1)
    assert _lines(capfd, sink) == []
    router_logging.configure_logging(LogSettings())


def test_request_fields_are_on_every_line_and_tasks_never_add_to_them(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A task started during a request sees the request's fields; what it binds
    stays in the task (as with structlog's contextvars)."""
    sink = router_logging.configure_logging(LogSettings())
    router_logging.clear_request()
    router_logging.bind_request(request_id="r2", tenant="demo")

    async def child() -> None:
        router_logging.bind_request(model="shadow")
        structlog.get_logger("t").info("child.line", tenant="own")

    asyncio.run(child())
    structlog.get_logger("t").info("parent.line")
    assert router_logging.request_fields() == {"request_id": "r2", "tenant": "demo"}
    child_line, parent_line = _lines(capfd, sink)
    assert child_line["request_id"] == "r2" and child_line["model"] == "shadow"
    assert child_line["tenant"] == "own"  # the line's own key wins
    assert parent_line["request_id"] == "r2" and "model" not in parent_line
    router_logging.clear_request()
    structlog.get_logger("t").info("after.clear")
    assert "request_id" not in _lines(capfd, sink)[0]


def test_request_lines_render_in_order_at_the_next_flush_or_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Request lines wait as fields until the stream is flushed or another line
    is written; they keep their order among the other lines and the time they
    were logged."""
    sink = router_logging.configure_logging(LogSettings())
    router_logging.log_request_done({"request_id": "a"}, method="/m", status="OK")
    time.sleep(0.002)
    router_logging.log_request_done({"request_id": "b"}, method="/m", status="OK")
    assert len(sink._deferred) == 2
    structlog.get_logger("t").warning("other.line")
    router_logging.log_request_done({"request_id": "c"}, method="/m", status="OK")
    lines = _lines(capfd, sink)  # flushes
    assert [line.get("request_id", line["event"]) for line in lines] == [
        "a",
        "b",
        "other.line",
        "c",
    ]
    assert lines[0]["timestamp"] < lines[1]["timestamp"] <= lines[2]["timestamp"]
    assert sink._deferred == []

"""bench.perf_profile: perf report parsing, per-thread CPU, and a real perf run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import perf_profile
from bench.overhead import perf_markdown

REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 4K of event 'cpu-clock:ppp'
# Event count (approx.): 998800000
#
# Overhead  Shared Object
# ........  ..............
#
    50.79%  libpython3.11.so.1.0
    18.32%  [kernel.kallsyms]
     4.47%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
"""

KERNEL = """\
# Overhead  Symbol
     5.34%  [k] _raw_spin_unlock_irqrestore
     4.84%  [k] finish_task_switch.isra.0

"""


def test_report_rows_are_parsed_with_their_shares() -> None:
    rows = perf_profile.parse_report(REPORT)
    assert [(r.percent, r.name) for r in rows] == [
        (50.79, "libpython3.11.so.1.0"),
        (18.32, "[kernel.kallsyms]"),
        (4.47, "_multiarray_umath.cpython-311-x86_64-linux-gnu.so"),
    ]
    kernel = perf_profile.parse_report(KERNEL)
    assert [r.name for r in kernel] == ["_raw_spin_unlock_irqrestore", "finish_task_switch.isra.0"]
    assert perf_profile.table(rows, ("object", "share"), top=1).splitlines() == [
        "| object | share |",
        "| --- | --- |",
        "| libpython3.11.so.1.0 | 50.8% |",
    ]


def test_thread_delta_names_the_main_thread_and_sums_by_name() -> None:
    before = {(10, "python"): 1.0, (11, "event_engine"): 0.5, (12, "event_engine"): 0.0}
    after = {
        (10, "python"): 3.0,
        (11, "event_engine"): 0.75,
        (12, "event_engine"): 0.25,
        (13, "late"): 0.1,  # started inside the window
    }
    got = perf_profile.thread_delta(10, before, after)
    assert got == pytest.approx({"main": 2.0, "event_engine": 0.5, "late": 0.1})


def test_thread_cpu_sees_a_busy_thread_of_this_process() -> None:
    pid = os.getpid()
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        while time.thread_time() < 0.3:  # CPU, not wall: a loaded box only slows it
            pass
        spun.set()
        done.wait()  # alive (and idle) while the second reading is taken

    t = threading.Thread(target=spin)
    before = perf_profile.thread_cpu(pid)
    t.start()
    try:
        assert spun.wait(10)
        after = perf_profile.thread_cpu(pid)
    finally:
        done.set()
        t.join()
    delta = perf_profile.thread_delta(pid, before, after)
    assert "main" in delta
    # Threads are named after the process in /proc; the spinner is the one
    # that burnt ~0.3 s of CPU between the readings.
    others = sum(v for k, v in delta.items() if k != "main")
    assert others >= 0.25, delta


def test_perf_markdown_renders_the_profile() -> None:
    prof = {
        "requests": 4000,
        "wall_s": 8.0,
        "threads_us_per_req": {"main": 701.2, "event_engine": 2.0},
        "objects": [[50.8, "libpython3.11.so.1.0"], [18.3, "[kernel.kallsyms]"]],
        "kernel": [[5.3, "_raw_spin_unlock_irqrestore"]],
    }
    text = "\n".join(perf_markdown(prof))
    assert "4,000 more full-path requests" in text
    assert "main 701 us, event_engine 2 us" in text
    assert "| libpython3.11.so.1.0 | 50.8% |" in text
    assert "| `_raw_spin_unlock_irqrestore` | 5.3% |" in text


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf not installed (linux-perf)")
def test_a_real_perf_recording_attributes_a_busy_python_loop(tmp_path: Path) -> None:
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.monotonic() + 30\n"
            "while time.monotonic() < end: sum(range(1000))",
        ]
    )
    try:
        data = tmp_path / "perf.data"
        with perf_profile.recording(busy.pid, data, freq=999):
            time.sleep(1.0)
        objects = perf_profile.shares(data)
        if not objects:
            pytest.skip("perf recorded nothing (perf_event_paranoid?)")
        by_name = {r.name: r.percent for r in objects}
        python = sum(p for n, p in by_name.items() if "python" in n)
        assert python > 50.0, by_name
        assert sum(by_name.values()) == pytest.approx(100.0, abs=1.0)
        kernel = perf_profile.shares(data, sort="sym", dso=perf_profile.KERNEL)
        assert all(r.percent <= by_name.get(perf_profile.KERNEL, 0.0) + 0.01 for r in kernel)
    finally:
        busy.kill()
        busy.wait()


def test_stat_lines_with_odd_command_names_parse() -> None:
    """The command name may hold spaces and ')': fields count from the last ')'."""
    from scripts.supervisor import stat_cpu_seconds, stat_fields

    tick = os.sysconf("SC_CLK_TCK")
    rest = "S 1 2 3 0 -1 4194560 100 0 0 0 {u} {s} 0 0 20 0 3 0 100 1000 10"
    line = f"4242 (py thon) (x)) {rest.format(u=3 * tick, s=tick)}"
    assert stat_fields(line)[0] == "S"
    assert stat_cpu_seconds(line) == pytest.approx(4.0)
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert stat_cpu_seconds(own) >= 0.0 and stat_fields(own)[0] in "RS"

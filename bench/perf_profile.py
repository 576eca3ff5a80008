"""Where one process's CPU goes below Python: ``perf record`` while a load runs.

Software clock sampling, so it works in VMs without hardware counters (this
one exposes none). Reported as shares of the process's samples per shared
object and per kernel symbol, plus the process's CPU per thread from ``/proc``
over the same window (is it the event loop, or a background thread?). Used by
``bench.router_cpu --perf`` and ``bench.overhead --perf``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scripts.supervisor import stat_cpu_seconds

KERNEL = "[kernel.kallsyms]"


@dataclass(frozen=True)
class Share:
    percent: float
    name: str


def parse_report(text: str) -> list[Share]:
    """Rows of ``perf report --stdio -g none``: ``12.34%  name`` (comments and
    blank lines skipped; a ``[k]``/``[.]`` symbol marker dropped)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s[:1].isdigit() or "%" not in s.split(None, 1)[0]:
            continue
        share, _, name = s.partition(" ")
        name = name.strip()
        if name[:3] in ("[k]", "[.]"):
            name = name[3:].strip()
        out.append(Share(float(share.rstrip("%")), name))
    return out


def perf_exe() -> str:
    exe = shutil.which("perf")
    if exe is None:
        raise FileNotFoundError("perf not found: apt-get install -y linux-perf")
    return exe


@contextlib.contextmanager
def recording(pid: int, data: Path, freq: int = 4999) -> Iterator[None]:
    """``perf record`` on ``pid`` for the body of the ``with``."""
    rec = subprocess.Popen(
        [perf_exe(), "record", "-F", str(freq), "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)


def shares(data: Path, sort: str = "dso", dso: str | None = None) -> list[Share]:
    """The recorded samples by ``sort`` key; with ``dso``, that object's rows
    only, still as shares of all the process's samples."""
    cmd = [perf_exe(), "report", "-i", str(data), "--sort", sort, "--stdio", "-g", "none"]
    if dso is not None:
        cmd += ["--dsos", dso]
    return parse_report(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds so far per thread of ``pid``, keyed by (tid, name)."""
    out: dict[tuple[int, str], float] = {}
    task = Path(f"/proc/{pid}/task")
    for tid in os.listdir(task):
        with contextlib.suppress(OSError):
            stat = (task / tid / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[(int(tid), name)] = stat_cpu_seconds(stat)
    return out


def thread_delta(
    pid: int, before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
) -> dict[str, float]:
    """CPU seconds per thread name between two ``thread_cpu(pid)`` readings
    (threads of one name summed; the thread whose tid is ``pid`` is ``main``)."""
    out: dict[str, float] = {}
    for (tid, name), s in after.items():
        key = "main" if tid == pid else name
        out[key] = out.get(key, 0.0) + s - before.get((tid, name), 0.0)
    return out


def table(rows: list[Share], header: tuple[str, str], top: int = 12) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {r.name} | {r.percent:.1f}% |" for r in rows[:top]]
    return "\n".join(lines)

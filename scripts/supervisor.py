"""Child processes for the local stack: free ports, one log each, readiness
waits, and a stop that leaves no orphans.

Each child leads its own process group (stop signals the group, Triton's
stubs included), live supervisors are stopped at exit, and children get
SIGTERM if the launching thread dies (``PR_SET_PDEATHSIG``), which covers a
SIGKILLed test runner. Also the /proc readers the benchmarks use for CPU per
process group. The servers themselves are in scripts/stack.py and
scripts/edge_stack.py.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, NamedTuple, Self

ROOT = Path(__file__).resolve().parent.parent

# Log lines meaning "someone took the port between our pick and the bind":
# the start is retried on fresh ports instead of failing the run.
_BIND_ERROR = re.compile(r"address already in use|already in use|failed to bind", re.IGNORECASE)
_START_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A process died, never became ready, or the build directory is incomplete."""


# Ports this process has handed out. The kernel may offer a free port again
# once its picking socket is closed, and a port picked up front for a process
# started later (the router behind Envoy) must not go to another child in
# between: then every retry of that start binds the same taken port.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_HANDED_OUT_MAX = 8192


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free loopback ports, none handed out before by this process
    (a port another process takes first is a lost race, retried by ``start``)."""
    with contextlib.ExitStack() as stack, _handed_out_lock:
        if len(_handed_out) > _HANDED_OUT_MAX:
            _handed_out.clear()  # bounded; the ports of long-gone children come back
        ports: list[int] = []
        while len(ports) < n:
            s = stack.enter_context(socket.socket())  # held until all n are picked
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
        _handed_out.update(ports)
        return ports


class ProcInfo(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    cpu_s: float  # user + system so far
    exe: str  # basename of argv[0] (``comm`` is cut at 15 characters)


_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(stat: str) -> list[str]:
    """The fields of a ``/proc/<pid>[/task/<tid>]/stat`` line after the command
    name (which may hold spaces and parentheses): [0] is the state."""
    return stat[stat.rfind(")") + 2 :].split()


def stat_cpu_seconds(stat: str) -> float:
    """User + system CPU seconds in a ``/proc/.../stat`` line."""
    f = stat_fields(stat)
    return (int(f[11]) + int(f[12])) / _TICKS


def cpu_seconds(pid: int) -> float:
    """CPU used so far by one process (all its threads)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def processes() -> Iterator[ProcInfo]:
    """Live (non-zombie) processes, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0", 1)[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        f = stat_fields(raw)
        if f[0] != "Z":
            cpu = stat_cpu_seconds(raw)
            exe = os.path.basename(argv0.decode(errors="replace"))
            yield ProcInfo(int(entry), int(f[1]), int(f[2]), cpu, exe)


def group_pids(pgid: int) -> list[int]:
    return [p.pid for p in processes() if p.pgid == pgid]


def group_cpu_seconds(pgid: int) -> float:
    """CPU used so far by the live members of a process group (for benchmarks)."""
    return sum(p.cpu_s for p in processes() if p.pgid == pgid)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:]
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


_live: list[Supervisor] = []
_live_lock = threading.Lock()


def stop_all() -> None:
    """Stop every live supervisor, newest first (registered with atexit)."""
    with _live_lock:
        procs = list(reversed(_live))
    for p in procs:
        p.stop()


atexit.register(stop_all)


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # Linux only, like /proc


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """preexec_fn: SIGTERM the child when the launching thread dies.

    The kernel ties PDEATHSIG to the *thread* that forked, so it is only armed
    when launching from the main thread; elsewhere atexit is the safety net.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def arm() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # parent died between fork and prctl
            os._exit(1)

    return arm


class Supervisor(abc.ABC):
    """One child process: free ports, log file, readiness wait, group stop.

    Subclasses provide the command, the number of ports and a readiness probe.
    """

    name = "process"
    n_ports = 1
    start_timeout_s = 30.0
    stop_timeout_s = 10.0  # after SIGTERM, before SIGKILL

    def __init__(self, log_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self._extra_env = dict(env or {})
        self.ports: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._unique_log_path()
        self._log: IO[bytes] | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """argv to run; called on every start attempt, after ``self.ports`` is set."""

    @abc.abstractmethod
    def probe(self) -> bool:
        """One readiness check; must return quickly (short timeouts)."""

    def base_env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def group_pids(self) -> list[int]:
        """Every live process of this child's group (it and what it spawned)."""
        return group_pids(self.pid) if self.proc is not None else []

    def _unique_log_path(self) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.log_dir / f"{self.name}.log", 1
        while path.exists():
            n += 1
            path = self.log_dir / f"{self.name}-{n}.log"
        return path

    def start(self) -> Self:
        if self.proc is not None:
            raise StackError(f"{self.name} already started")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        with _live_lock:
            _live.append(self)
        try:
            for attempt in range(1, _START_ATTEMPTS + 1):
                self.ports = free_ports(self.n_ports)
                if self._launch_and_wait(last=attempt == _START_ATTEMPTS):
                    return self
            raise AssertionError("unreachable")  # _launch_and_wait raises on the last try
        except BaseException:
            self.stop()
            raise

    def relaunch(self) -> Self:
        """Start again on the same ports after the process died or was stopped.

        For restart drills: clients and peers keep the address they have. Call it
        from a worker thread when this process has used gRPC (no preexec_fn there).
        """
        if self.proc is not None and self.proc.poll() is None:
            raise StackError(f"{self.name} is still running")
        if not self.ports:
            raise StackError(f"{self.name} was never started")
        if self.proc is not None:
            self._reap_group()
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        with _live_lock:
            if self not in _live:
                _live.append(self)
        self._launch_and_wait(last=True)
        return self

    def _launch_and_wait(self, *, last: bool) -> bool:
        """Start once and wait for readiness; False means "port race, retry"."""
        assert self._log is not None
        cmd = self.command()
        env = self.base_env()
        env.update(self._extra_env)
        self._log.write(f"# {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        self._log.flush()
        log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            rc = self.proc.poll()
            if rc is not None:
                new_output = self.log_path.read_bytes()[log_offset:].decode(errors="replace")
                self._reap_group()
                self.proc = None
                if not last and _BIND_ERROR.search(new_output):
                    return False
                raise self._error(f"exited with code {rc} before becoming ready")
            if self.probe():
                return True
            if time.monotonic() > deadline:
                raise self._error(f"not ready after {self.start_timeout_s:.0f} s")
            time.sleep(0.05)

    def _error(self, what: str) -> StackError:
        tail = log_tail(self.log_path)
        return StackError(f"{self.name} {what} (log {self.log_path}):\n{tail}")

    def check_alive(self) -> None:
        """Raise StackError with the log tail if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self._error(f"exited with code {self.proc.returncode}")

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _reap_group(self) -> None:
        """Leader is gone: give the rest of its group 2 s to follow, then SIGKILL it."""
        assert self.proc is not None
        for grace_s in (2.0, 5.0):
            deadline = time.monotonic() + grace_s
            while group_pids(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not group_pids(self.proc.pid):
                return
            self._signal_group(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the group, wait ``stop_timeout_s``, then SIGKILL. Idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait()
            self._reap_group()
        if self._log is not None:
            self._log.close()
            self._log = None
        with _live_lock:
            if self in _live:
                _live.remove(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

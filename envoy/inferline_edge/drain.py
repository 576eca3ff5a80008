"""Graceful drain of the Envoy in this pod, for Kubernetes' preStop.

Why a program for it: on SIGTERM Envoy closes its listeners at once (no GOAWAY
first; in-flight streams are reset). Draining exists only on its admin API
(``POST /drain_listeners?graceful``), which binds the pod's loopback, and the
distroless Envoy image has no shell or HTTP client for an exec hook. So a
small container beside Envoy (the inferline image) runs ``idle``, and its
preStop runs ``now``: start the graceful drain (HTTP/2 callers get GOAWAY,
HTTP/1.1 ones ``connection: close``, over ``--drain-time-s``), then hold.
Envoy's own preStop sleeps as long, so its SIGTERM comes once its callers
have moved to other replicas.

    python -m inferline_edge.drain idle
    python -m inferline_edge.drain now --admin 127.0.0.1:9901 --hold 20
    python -m inferline_edge.drain check [--admin 127.0.0.1:9901]   # probes
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import urllib.error
import urllib.request


def drain(admin: str, timeout_s: float = 2.0) -> None:
    """Start Envoy's graceful drain of every listener (inbound only: its own
    upstream connections to the routers stay up for the requests in flight)."""
    request = urllib.request.Request(
        f"http://{admin}/drain_listeners?graceful", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        if response.status != 200:
            raise OSError(f"envoy admin answered HTTP {response.status}")


def reachable(admin: str, timeout_s: float = 1.0) -> bool:
    """Envoy's admin API answers: a drain could be started now."""
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferline_edge.drain", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("idle", help="wait for SIGTERM (the container's main process)")
    now = sub.add_parser("now", help="start Envoy's graceful drain, then hold (the preStop)")
    now.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin host:port")
    now.add_argument("--hold", type=float, default=0.0, help="seconds to wait after starting it")
    check = sub.add_parser("check", help="probe: 0 if Envoy's admin answers (or, alone, if alive)")
    check.add_argument("--admin", default=None, help="Envoy admin host:port")
    args = p.parse_args(argv)
    if args.cmd == "check":
        return 0 if args.admin is None or reachable(args.admin) else 1
    if args.cmd == "idle":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    try:
        drain(args.admin)
    except (OSError, urllib.error.URLError) as e:
        # Envoy gone or not answering: nothing left to drain; say so, do not block.
        print(f"drain: {e}", file=sys.stderr)
        return 1
    time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

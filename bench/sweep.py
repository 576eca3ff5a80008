"""Dynamic-batching sweep against the real tritonserver, picked by the p95 budget.

For each model and each setting (``max_queue_delay_microseconds`` x preferred
batch sizes x instance count) a temporary repository holds version 1 of the
model with its ``config.pbtxt`` rewritten, and a fresh tritonserver
(``scripts.stack.TritonServer``) serves it alone. h2load drives ModelInfer at
each concurrency (two passes in the full sweep, alternating the order of the
concurrencies; medians kept) and writes every request's latency (``--log-file``), so the
percentiles come from raw samples; Triton's success/failure counters confirm
every request succeeded (h2load counts HTTP 200, and gRPC errors are HTTP 200),
and /proc gives Triton's CPU per request (its stub processes included).

The pick is by budget, not throughput: inference gets 12 ms of the 25 ms p95
(docs/DESIGN.md). A setting qualifies when its p95 is within the budget at
every concurrency and no request failed; among those whose throughput at the
highest concurrency is within ``--tie`` of the best (noise on a shared 2-core
host), the shortest queue delay wins (light traffic pays every microsecond of
it: concurrency-1 latency rises one for one), then fewer instances (one stub
process and model copy each), then the lower measured concurrency-1 p95.
Requests h2load cancels when its time is up (at most the concurrency) are
reported as ``triton_canceled``, not as failures.

    python -m bench.sweep --build build --json build/sweep/sweep.json --plots docs/img
    python -m bench.sweep --build build --quick          # ~1 minute
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.h2load import grpc_frame, parse_h2load
from bench.loadgen import TRITON_METHOD, triton_request

BUDGET_MS = 12.0
FULL: dict[str, Any] = {
    "delays": (0, 100, 200, 500, 1000, 2000),
    "preferred": ((), (8, 16, 32)),
    "preferred_delays": (500, 2000),  # preferred sizes only matter where the batcher waits
    "instances": (1, 2),
    "concurrency": (1, 8, 32),
    "duration_s": 1.5,
    "warmup_s": 0.5,
    "repeats": 2,
}
QUICK: dict[str, Any] = {
    "delays": (0, 1000),
    "preferred": ((),),
    "preferred_delays": (),
    "instances": (1,),
    "concurrency": (1, 8),
    "duration_s": 1.0,
    "warmup_s": 0.5,
    "repeats": 1,
}


@dataclasses.dataclass(frozen=True, order=True)
class Setting:
    delay_us: int
    preferred: tuple[int, ...] = ()
    instances: int = 1

    @property
    def label(self) -> str:
        pref = ",".join(map(str, self.preferred)) or "-"
        return f"delay {self.delay_us} us, preferred [{pref}], {self.instances} inst"

    @property
    def slug(self) -> str:
        pref = "-".join(map(str, self.preferred)) or "none"
        return f"d{self.delay_us}_p{pref}_i{self.instances}"


def grid(
    delays: Sequence[int],
    preferred: Sequence[tuple[int, ...]],
    instances: Sequence[int],
    preferred_delays: Sequence[int] | None = None,
) -> list[Setting]:
    """Every delay x instance count without preferred sizes, plus each preferred set
    at ``preferred_delays`` (all delays when None; never at delay 0, where the
    batcher never waits and preferred sizes change nothing)."""
    out = []
    for inst in instances:
        for d in delays:
            for pref in preferred:
                if pref and (
                    d == 0 or (preferred_delays is not None and d not in preferred_delays)
                ):
                    continue
                out.append(Setting(d, tuple(pref), inst))
    return sorted(set(out))


_DYN = re.compile(r"^dynamic_batching\s*\{[^}]*\}", re.M)
_INST = re.compile(r"^(instance_group\s*\[\s*\{[^]]*?count:\s*)(\d+)", re.M)


def rewrite_config(text: str, s: Setting) -> str:
    """The rendered ``config.pbtxt`` with this setting's batching and instance count."""
    pref = f" preferred_batch_size: [ {', '.join(map(str, s.preferred))} ]" if s.preferred else ""
    block = f"dynamic_batching {{ max_queue_delay_microseconds: {s.delay_us}{pref} }}"
    text, n_dyn = _DYN.subn(block, text)
    text, n_inst = _INST.subn(lambda m: f"{m[1]}{s.instances}", text)
    if n_dyn != 1 or n_inst != 1:
        raise ValueError(f"config has {n_dyn} dynamic_batching and {n_inst} instance_group blocks")
    return text


def write_setting_repo(source: Path, model: str, s: Setting, dest: Path) -> Path:
    """``dest/<model>``: version 1 of ``source/<model>`` with the setting's config."""
    shutil.rmtree(dest, ignore_errors=True)
    src = source / model
    shutil.copytree(src / "1", dest / model / "1", ignore=shutil.ignore_patterns("__pycache__"))
    cfg = rewrite_config((src / "config.pbtxt").read_text(), s)
    (dest / model / "config.pbtxt").write_text(cfg)
    return dest


def h2load_shape(concurrency: int) -> tuple[int, int]:
    """(connections, streams each) for ``concurrency`` requests in flight."""
    clients = min(concurrency, 4)
    return clients, math.ceil(concurrency / clients)


def h2load_cmd(address: str, body: Path, log: Path, concurrency: int, requests: int) -> list[str]:
    """A count-based run: h2load ends when every request has been answered.

    Not ``--duration``: at its end h2load resets the streams still in flight,
    and those resets have crashed Triton 2.51's gRPC frontend here
    (``ASSERTION FAILED: prior > 0`` in grpc sync.cc, SIGABRT).
    """
    exe = shutil.which("h2load")
    if exe is None:
        raise FileNotFoundError("h2load not found: apt-get install -y nghttp2-client")
    clients, streams = h2load_shape(concurrency)
    return [
        exe, f"--clients={clients}", f"--max-concurrent-streams={streams}", "--threads=1",
        f"--data={body}", f"--requests={max(requests, clients)}", f"--log-file={log}",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{address}{TRITON_METHOD}",
    ]  # fmt: skip


def latency_stats(log_text: str) -> dict[str, float]:
    """p50/p95/p99/max/mean (ms) and the non-200 count from an h2load --log-file."""
    rows = [line.split("\t") for line in log_text.splitlines() if line.strip()]
    status = np.array([int(r[1]) for r in rows], dtype=np.int64)
    us = np.array([float(r[2]) for r in rows], dtype=np.float64)
    ok = us[status == 200] / 1e3
    if ok.size == 0:
        return {"n": 0, "bad_status": int(status.size)}
    p50, p95, p99 = np.percentile(ok, [50, 95, 99])
    return {
        "n": int(ok.size),
        "bad_status": int((status != 200).sum()),
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(ok.max()), 3),
        "mean_ms": round(float(ok.mean()), 3),
    }


_OUTCOME = re.compile(r"^nv_inference_request_(success|failure)\{([^}]*)\} (\S+)$", re.M)
_REASON = re.compile(r'reason="([^"]*)"')


def triton_outcomes(metrics_text: str, model: str) -> dict[str, float]:
    """Triton's request counters for ``model``: ``success`` and one key per failure reason.

    CANCELED is kept apart: h2load resets the streams still in flight when its
    duration ends, and Triton counts those (at most the concurrency) as failures.
    """
    out: dict[str, float] = {"success": 0.0}
    for kind, labels, value in _OUTCOME.findall(metrics_text):
        if f'model="{model}"' not in labels:
            continue
        reason = _REASON.search(labels)
        key = "success" if kind == "success" else (reason[1] if reason else "OTHER")
        out[key] = out.get(key, 0.0) + float(value)
    return out


def request_row(meta: dict[str, Any]) -> np.ndarray:
    """The first held-out row of the model's training data (real values, tensor order)."""
    from triton_models import build as tb

    ds = tb.fraud_dataset() if "account_features" in meta["entities"] else tb.ranker_dataset()
    _, test = tb._split(ds)
    row = ds.x[test][:1]
    if row.shape[1] != len(meta["features"]):
        raise ValueError(
            f"{meta['model']}: {row.shape[1]} columns, metadata has {len(meta['features'])}"
        )
    return np.ascontiguousarray(row, dtype=np.float32)


def measure(
    server: Any,
    model: str,
    body: Path,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    workdir: Path,
) -> dict[str, Any]:
    """One point at ``concurrency``: a warm-up run (~``warmup_s``) that also
    measures the rate, then a run sized to last ~``duration_s``. Latency from
    h2load's per-request log, CPU and outcomes from Triton."""
    from scripts.supervisor import group_cpu_seconds

    log = workdir / f"c{concurrency}.log"

    def h2load(requests: int) -> tuple[Any, str]:
        log.unlink(missing_ok=True)  # h2load appends to an existing log file
        cmd = h2load_cmd(server.grpc_url, body, log, concurrency, requests)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
        return parse_h2load(proc.stdout), log.read_text()

    def counts() -> dict[str, float]:
        # The metrics listener starts a little after HTTP reports ready.
        deadline = time.monotonic() + 10
        while True:
            try:
                text = server.http_get("/metrics", metrics=True, timeout=5).decode()
                return triton_outcomes(text, model)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    probe, _ = h2load(max(50 * concurrency, 200))
    spent = probe.finished_ms / 1e3
    if spent < warmup_s:  # warm up for the rest of warmup_s at the probed rate
        probe, _ = h2load(round(probe.req_per_s * (warmup_s - spent)))
    before, cpu0 = counts(), group_cpu_seconds(server.pid)
    summary, text = h2load(max(round(probe.req_per_s * duration_s), 20 * concurrency))
    cpu, after = group_cpu_seconds(server.pid) - cpu0, counts()
    stats = latency_stats(text)
    if stats["n"] + stats["bad_status"] != summary.total:
        raise RuntimeError(f"h2load log has {stats['n']} rows, its summary {summary.total}")
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    done = sum(delta.values())
    return {
        "concurrency": concurrency,
        "rps": round(stats["n"] / (summary.finished_ms / 1e3), 1),
        **stats,
        "triton_failures": int(done - delta["success"] - delta.get("CANCELED", 0.0)),
        "triton_canceled": int(delta.get("CANCELED", 0.0)),
        "triton_cpu_ms_per_req": round(1e3 * cpu / done, 4) if done else float("nan"),
    }


def median_point(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one concurrency: medians of the rates and percentiles, sums of counts."""
    if len(runs) == 1:
        return dict(runs[0])
    out: dict[str, Any] = {"concurrency": runs[0]["concurrency"], "repeats": len(runs)}
    for key, val in runs[0].items():
        if key in ("n", "bad_status", "triton_failures", "triton_canceled"):
            out[key] = sum(r[key] for r in runs)
        elif key != "concurrency" and isinstance(val, int | float):
            out[key] = round(statistics.median(r[key] for r in runs), 4)
    return out


def sweep_model(
    source: Path,
    model: str,
    settings: Sequence[Setting],
    concurrency: Sequence[int],
    duration_s: float,
    warmup_s: float,
    log_dir: Path,
    repeats: int = 1,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every setting of one model, each on a fresh tritonserver; ``repeats`` passes
    over the concurrencies on that server, alternating their order, medians kept."""
    from scripts.stack import TritonServer

    meta = json.loads((source / model / "1" / "metadata.json").read_text())
    row = request_row(meta)
    req = triton_request(
        model, row, version="1", input_name=meta["tensors"]["input"],
        output_name=meta["tensors"]["output"],
    )  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix=f"sweep-{model}-") as tmp:
        body = Path(tmp) / "request.grpc"
        body.write_bytes(grpc_frame(req))
        for s in settings:
            repo = write_setting_repo(source, model, s, Path(tmp) / "repo")
            t0 = time.monotonic()
            result = {"model": model, "setting": dataclasses.asdict(s), "label": s.label}
            for attempt in (1, 2):  # a crashed server is restarted once, then reported
                runs: dict[int, list[dict[str, Any]]] = {c: [] for c in concurrency}
                try:
                    with TritonServer(repo, log_dir / model / s.slug) as server:
                        for i in range(repeats):
                            for c in concurrency if i % 2 == 0 else concurrency[::-1]:
                                m = measure(server, model, body, c, duration_s, warmup_s,
                                            Path(tmp))  # fmt: skip
                                runs[c].append(m)
                        server.check_alive()
                except (OSError, RuntimeError) as e:  # StackError is a RuntimeError
                    progress(f"{model} {s.label}: attempt {attempt} failed: {e}")
                    result["errors"] = [*result.get("errors", []), f"{type(e).__name__}: {e}"]
                    continue
                break
            points = [median_point(runs[c]) for c in concurrency if runs[c]]
            results.append(result | {"points": points, "wall_s": round(time.monotonic() - t0, 1)})
            progress(f"{model:18} {s.label:42} " + "  ".join(
                f"c{p['concurrency']}: {p['rps']:7.0f} rps p95 {p.get('p95_ms', math.nan):6.2f} ms"
                for p in points
            ))  # fmt: skip
    return results


def qualifies(r: dict[str, Any], budget_ms: float) -> bool:
    return bool(r["points"]) and all(
        p["n"] > 0 and p["bad_status"] == 0 and p["triton_failures"] == 0
        and p["p95_ms"] <= budget_ms
        for p in r["points"]
    )  # fmt: skip


def _point(r: dict[str, Any], concurrency: int) -> dict[str, Any]:
    return next(p for p in r["points"] if p["concurrency"] == concurrency)


def pick(results: Sequence[dict[str, Any]], budget_ms: float, tie: float = 0.10) -> dict[str, Any]:
    """The setting to ship for one model, and why (see the module docstring)."""
    conc = {p["concurrency"] for r in results for p in r["points"]}
    cmax, cmin = max(conc), min(conc)
    ok = [r for r in results if qualifies(r, budget_ms)]
    if not ok:
        worst = min(results, key=lambda r: max(p.get("p95_ms", math.inf) for p in r["points"]))
        return {"setting": worst["setting"], "label": worst["label"], "within_budget": False,
                "why": f"no setting keeps p95 <= {budget_ms} ms at every concurrency; "
                       "this one has the lowest worst-case p95"}  # fmt: skip
    best = max(_point(r, cmax)["rps"] for r in ok)
    near = [r for r in ok if _point(r, cmax)["rps"] >= (1 - tie) * best]
    chosen = min(
        near,
        key=lambda r: (
            r["setting"]["delay_us"],
            r["setting"]["instances"],
            _point(r, cmin)["p95_ms"],
        ),
    )
    top, low = _point(chosen, cmax), _point(chosen, cmin)
    return {
        "setting": chosen["setting"],
        "label": chosen["label"],
        "within_budget": True,
        "qualifying": len(ok),
        "of": len(results),
        "why": (
            f"{len(ok)}/{len(results)} settings keep p95 <= {budget_ms:g} ms at every concurrency; "
            f"{len(near)} of them are within {tie:.0%} of the best throughput at concurrency "
            f"{cmax} ({best:.0f} rps); of those this one has the shortest queue delay, then "
            f"the fewest instances, then the lowest p95 at concurrency {cmin} "
            f"({low['p95_ms']:.2f} ms). At concurrency {cmax}: {top['rps']:.0f} rps, "
            f"p95 {top['p95_ms']:.2f} ms."
        ),
    }


def format_table(results: Sequence[dict[str, Any]], picks: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per (model, setting), columns per concurrency (rps / p50 / p95)."""
    conc = [p["concurrency"] for p in results[0]["points"]]
    head = (
        "| model | delay us | preferred | inst | "
        + " | ".join(f"c{c} rps | c{c} p50 | c{c} p95" for c in conc)
        + f" | CPU ms/req c{conc[-1]} |"
    )
    lines = [head, "|" + " --- |" * (4 + 3 * len(conc) + 1)]
    for r in results:
        s = r["setting"]
        mark = "**" if picks.get(r["model"], {}).get("setting") == s else ""
        cells = []
        for p in r["points"]:
            over = p.get("p95_ms", math.inf) > BUDGET_MS or p["triton_failures"] or p["bad_status"]
            p95 = f"{p.get('p95_ms', float('nan')):.2f}" + (" (!)" if over else "")
            cells.append(f"{p['rps']:.0f} | {p.get('p50_ms', float('nan')):.2f} | {p95}")
        pref = ",".join(map(str, s["preferred"])) or "-"
        lines.append(
            f"| {mark}{r['model']}{mark} | {s['delay_us']} | {pref} | {s['instances']} | "
            + " | ".join(cells) + f" | {r['points'][-1]['triton_cpu_ms_per_req']:.3f} |"
        )  # fmt: skip
    return "\n".join(lines)


def economics(
    results: Sequence[dict[str, Any]], picks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Per-core and per-instance throughput at each model's pick (capacity-model inputs)."""
    out: dict[str, Any] = {}
    for model, pk in picks.items():
        r = next(x for x in results if x["model"] == model and x["setting"] == pk["setting"])
        top = r["points"][-1]
        cpu = top["triton_cpu_ms_per_req"]
        out[model] = {
            "setting": pk["setting"],
            "concurrency": top["concurrency"],
            "rps": top["rps"],
            "p95_ms": top.get("p95_ms"),
            "triton_cpu_ms_per_req": cpu,
            "rps_per_core": round(1e3 / cpu, 1) if cpu and cpu == cpu else None,
            "rps_per_instance": round(top["rps"] / pk["setting"]["instances"], 1),
            "c1_triton_cpu_ms_per_req": r["points"][0]["triton_cpu_ms_per_req"],
        }
    return out


def parse_preferred(text: str) -> list[tuple[int, ...]]:
    """``"none;8,16,32"`` -> [(), (8, 16, 32)]."""
    out: list[tuple[int, ...]] = []
    for part in text.split(";"):
        part = part.strip()
        out.append(() if part in ("", "none", "-") else tuple(int(v) for v in part.split(",")))
    return out


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.sweep", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--build", type=Path, default=Path("build"), help="build_demo output")
    p.add_argument("--repository", type=Path, help="default <build>/model_repository")
    p.add_argument("--models", default="fraud,ranker", help="comma-separated model names")
    p.add_argument("--quick", action="store_true", help="2 settings x 2 concurrencies, 1 s each")
    p.add_argument("--delays", type=_ints, help="max_queue_delay_microseconds values")
    p.add_argument("--preferred", type=parse_preferred, help='e.g. "none;8,16,32"')
    p.add_argument("--preferred-delays", type=_ints, help="delays that get preferred sizes")
    p.add_argument("--instances", type=_ints, help="instance counts")
    p.add_argument("--concurrency", type=_ints, help="requests in flight")
    p.add_argument("--duration", type=float, help="measured seconds per point")
    p.add_argument("--warmup", type=float, help="warm-up seconds per point")
    p.add_argument("--repeats", type=int, help="passes per setting (medians kept)")
    p.add_argument("--budget-ms", type=float, default=BUDGET_MS, help="p95 budget for the pick")
    p.add_argument("--tie", type=float, default=0.10, help="throughput tie band for the pick")
    p.add_argument("--json", type=Path, help="write results, picks and the command here")
    p.add_argument("--markdown", type=Path, help="write the table and picks here")
    p.add_argument("--plots", type=Path, help="write sweep-<model>.png here")
    p.add_argument("--measurements", type=Path, help="merge per-core figures into this JSON")
    p.add_argument("--section", default="triton_cpu_batching_pick", help="its key there")
    p.add_argument("--log-dir", type=Path, help="default <build>/logs/sweep-<time>")
    return p


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    base = dict(QUICK if args.quick else FULL)
    for key, val in (("delays", args.delays), ("preferred", args.preferred),
                     ("preferred_delays", args.preferred_delays), ("instances", args.instances),
                     ("concurrency", args.concurrency), ("duration_s", args.duration),
                     ("warmup_s", args.warmup), ("repeats", args.repeats)):  # fmt: skip
        if val is not None:
            base[key] = val
    return base


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args)
    source = (args.repository or args.build / "model_repository").resolve()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if not (source / m / "1" / "metadata.json").exists()]
    if missing:
        sys.exit(f"{source} lacks {missing}: run `make build` (and the quantize step) first")
    settings = grid(plan["delays"], plan["preferred"], plan["instances"], plan["preferred_delays"])
    log_dir = (args.log_dir or args.build / "logs" / time.strftime("sweep-%Y%m%d-%H%M%S")).resolve()
    command = " ".join(["python -m bench.sweep", *(sys.argv[1:] if argv is None else argv)])
    print(f"{len(models)} model(s) x {len(settings)} settings x concurrency {plan['concurrency']}")
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    for model in models:
        results += sweep_model(source, model, settings, plan["concurrency"], plan["duration_s"],
                               plan["warmup_s"], log_dir, plan["repeats"])  # fmt: skip
    picks = {
        m: pick([r for r in results if r["model"] == m], args.budget_ms, args.tie) for m in models
    }
    table = format_table(results, picks)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(table)
    for m, pk in picks.items():
        print(f"pick {m}: {pk['label']}: {pk['why']}")
    print(f"sweep took {time.monotonic() - t0:.0f} s")
    report = {"command": command, "date": date, "plan": plan, "budget_ms": args.budget_ms,
              "results": results, "picks": picks, "economics": economics(results, picks),
              "wall_s": round(time.monotonic() - t0, 1)}  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=list) + "\n")
    if args.markdown:
        picks_md = "\n".join(f"- **{m}**: {pk['label']}. {pk['why']}" for m, pk in picks.items())
        args.markdown.write_text(f"Command: `{command}` ({date})\n\n{table}\n\n{picks_md}\n")
    if args.plots:
        from bench.plots import sweep_plots

        for path in sweep_plots(report, args.plots):
            print(f"wrote {path}")
    if args.measurements:
        from bench.plots import merge_json_section

        merge_json_section(args.measurements, args.section, {
            "unit": "Triton (Python backend) on CPU, direct ModelInfer via h2load, 1 row/request",
            "source": command, "date": date, "values": report["economics"],
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

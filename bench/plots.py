"""Figures and shared JSON output for the performance benchmarks (issue 7).

matplotlib with the Agg backend (no display on CI or the GPU machine). Each
writer of ``docs/measurements-models.json`` owns one top-level section and
merges it in, so the batching sweep, the quantization run and the GPU script
can refresh their figures independently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def merge_json_section(path: Path, section: str, value: Any) -> None:
    """Set ``path[section] = value``, keeping the other sections (file created if absent)."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(
        "$comment",
        "Per-core / per-instance / per-GPU throughput for the capacity model (issue 7). "
        "Each section is written by the command in its 'source'; rerun it to refresh.",
    )
    data[section] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _series(results: Sequence[dict[str, Any]]) -> dict[tuple[int, tuple[int, ...]], list[Any]]:
    """(instances, preferred) -> results sorted by delay."""
    out: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
    for r in results:
        s = r["setting"]
        out.setdefault((s["instances"], tuple(s["preferred"])), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["setting"]["delay_us"])
    return out


def sweep_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """One PNG per model: throughput and p95 against the queue delay, a line per
    (instances, preferred sizes, concurrency), with the p95 budget and the pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    budget = float(report["budget_ms"])
    written = []
    for model in dict.fromkeys(r["model"] for r in report["results"]):
        results = [r for r in report["results"] if r["model"] == model]
        conc = [p["concurrency"] for p in results[0]["points"]]
        colors = dict(zip(conc, ["tab:blue", "tab:orange", "tab:red", "tab:green"], strict=False))
        fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 5.4))
        for (inst, pref), rows in sorted(_series(results).items()):
            style = "-" if inst == 1 else "--"
            marker = "o" if not pref else "s"
            tag = f"{inst} inst{', pref' if pref else ''}"
            x = [r["setting"]["delay_us"] for r in rows]
            for i, c in enumerate(conc):
                rps = [r["points"][i]["rps"] for r in rows]
                p95 = [r["points"][i].get("p95_ms", math.nan) for r in rows]
                kw = {"color": colors.get(c), "linestyle": style, "marker": marker, "ms": 4}
                ax_t.plot(x, rps, label=f"c{c}, {tag}", **kw)
                ax_l.plot(x, p95, label=f"c{c}, {tag}", **kw)
        ax_l.axhline(budget, color="black", linewidth=1, linestyle=":")
        ax_l.text(0, budget, f" p95 budget {budget:g} ms", va="bottom", fontsize=8)
        pick = report["picks"].get(model, {})
        for ax, ylabel in ((ax_t, "throughput (req/s)"), (ax_l, "p95 latency (ms)")):
            ax.set_xscale("symlog", linthresh=100)
            ax.set_xlabel("max_queue_delay_microseconds (symlog)")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if pick.get("setting"):
                ax.axvline(pick["setting"]["delay_us"], color="grey", alpha=0.4)
        ax_l.set_yscale("log")
        handles, labels = ax_t.get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
        fig.suptitle(
            f"{model}: dynamic batching sweep, direct Triton via h2load ({report['date']})\n"
            f"pick: {pick.get('label', 'n/a')}",
            fontsize=10,
        )
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = out_dir / f"sweep-{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def gpu_plot(report: dict[str, Any], path: Path) -> Path:
    """Rows/s against rows per request for each GPU variant (bench/gpu_bench.py results)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        if r["load"] == "throughput":
            by_model.setdefault(r["model"], []).append(r)
    for model, rows in sorted(by_model.items()):
        rows.sort(key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in rows], [r["rows_per_s"] for r in rows], marker="o",
                label=model)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rows per request")
    ax.set_ylabel("rows/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.get('gpu', 'GPU')} ({report.get('date', '')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

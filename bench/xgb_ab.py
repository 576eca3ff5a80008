"""The fraud GBDT's prediction path on Triton's Python backend, A/B.

Builds ``<build>/xgb_ab/model_repository`` holding the demo's fraud model once
per path, ``fraud_<path>``: the same artifact and code with the config
parameter ``xgboost_predict`` set to the path (``triton_models/fraud/model.py``:
``onnx``, the forest on onnxruntime, shipped default; ``direct``, XGBoost's
dense C entry point; ``inplace``, ``Booster.inplace_predict``), then drives
both directly at Triton's ModelInfer with ``bench.sweep`` (one instance, queue
delay 0, concurrency 1 and 32), once in each order so the VM's drift hits both
alike. Ratios are the first path over the second:

    python -m bench.xgb_ab --build build                          # onnx vs direct
    python -m bench.xgb_ab --build build --paths direct,inplace
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import sweep

PATHS = {
    "onnx": "ONNX forest (onnxruntime)",
    "direct": "XGBoost dense C entry point",
    "inplace": "`inplace_predict`",
}
"""``xgboost_predict`` values and their names in the summary."""


def build_repository(
    build: Path, paths: Sequence[str] = ("onnx", "direct"), repo: Path | None = None
) -> Path:
    """The A/B repository (default ``<build>/xgb_ab/model_repository``): version 1
    of the demo's fraud model as ``fraud_<path>`` for each of ``paths``."""
    source = build / "model_repository" / "fraud"
    repo = repo or build / "xgb_ab" / "model_repository"
    shutil.rmtree(repo, ignore_errors=True)
    for mode in paths:
        name = f"fraud_{mode}"
        dest = repo / name
        shutil.copytree(source / "1", dest / "1", ignore=shutil.ignore_patterns("__pycache__"))
        cfg = (source / "config.pbtxt").read_text()
        cfg, n = re.subn(r'^name: "fraud"', f'name: "{name}"', cfg, flags=re.M)
        if n != 1:
            raise SystemExit(f"{source}/config.pbtxt: no model name line")
        cfg += (
            "\n# bench.xgb_ab: the prediction path under test\n"
            f'parameters: {{ key: "xgboost_predict" value: {{ string_value: "{mode}" }} }}\n'
        )
        (dest / "config.pbtxt").write_text(cfg)
    return repo


def summarize(reports: list[dict[str, Any]], paths: tuple[str, str]) -> str:
    """Markdown: per concurrency, each path's throughput, p50 and Triton CPU per
    request (mean of the two orders), and the first path over the second."""
    acc: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for report in reports:
        for r in report["results"]:
            for pt in r["points"]:
                key = (r["model"], pt["concurrency"])
                acc.setdefault(key, []).append(
                    (pt["rps"], pt["p50_ms"], pt["triton_cpu_ms_per_req"])
                )
    mean = {k: [sum(col) / len(col) for col in zip(*v, strict=True)] for k, v in acc.items()}
    lines = [
        f"{reports[0]['date']}; {len(reports)} orders x {reports[0]['plan']['repeats']} passes",
        "",
        "| concurrency | path | throughput | p50 | Triton CPU / request |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in sorted({c for _, c in mean}):
        a, b = (mean[(f"fraud_{p}", c)] for p in paths)
        for p, m in zip(paths, (a, b), strict=True):
            lines.append(f"| {c} | {PATHS[p]} | {m[0]:,.0f} rps | {m[1]:.2f} ms | {m[2]:.3f} ms |")
        lines.append(f"| {c} | ratio | {a[0] / b[0]:.2f} | {a[1] / b[1]:.2f} | {a[2] / b[2]:.2f} |")
    return "\n".join(lines)


def _paths(text: str) -> tuple[str, str]:
    parts = tuple(text.split(","))
    if len(parts) != 2 or parts[0] == parts[1] or not set(parts) <= set(PATHS):
        raise argparse.ArgumentTypeError(f"two different paths of {', '.join(PATHS)}")
    return parts[0], parts[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--paths", type=_paths, default=("onnx", "direct"), help="A,B")
    args = p.parse_args(argv)
    repo = build_repository(args.build, args.paths)
    models = [f"fraud_{p}" for p in args.paths]
    out = args.build / "xgb_ab"
    for i, order in enumerate((models, models[::-1])):
        sweep.main([
            "--build", str(args.build), "--repository", str(repo), "--models", ",".join(order),
            "--delays", "0", "--instances", "1", "--preferred", "none",
            "--concurrency", "1,32", "--repeats", str(args.repeats),
            "--duration", str(args.duration), "--json", str(out / f"ab-{i}.json"),
        ])  # fmt: skip
    print(summarize([json.loads((out / f"ab-{i}.json").read_text()) for i in range(2)], args.paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

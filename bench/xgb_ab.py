"""The fraud GBDT's prediction path on Triton's Python backend, A/B.

Builds ``<build>/xgb_ab/model_repository`` holding the demo's fraud model twice:
``fraud`` (XGBoost's dense C entry point, ``triton_models/xgb_dense.py``: the
shipped default) and ``fraud_inplace`` (the same artifact and code with the
config parameter ``xgboost_predict: inplace``, i.e. ``Booster.inplace_predict``),
then drives both directly at Triton's ModelInfer with ``bench.sweep`` (one
instance, queue delay 0, concurrency 1 and 32), once in each order so the VM's
drift hits both alike:

    python -m bench.xgb_ab --build build
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from bench import sweep

VARIANTS = {"fraud": "direct", "fraud_inplace": "inplace"}


def build_repository(build: Path) -> Path:
    """The A/B repository (version 1 of the demo's fraud model, twice)."""
    source = build / "model_repository" / "fraud"
    repo = build / "xgb_ab" / "model_repository"
    shutil.rmtree(repo, ignore_errors=True)
    for name, mode in VARIANTS.items():
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


def summarize(reports: list[dict[str, Any]]) -> str:
    """Markdown: per concurrency, each variant's throughput and Triton CPU per
    request (mean of the two orders) and direct / inplace."""
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
        d, i = mean[("fraud", c)], mean[("fraud_inplace", c)]
        lines += [
            f"| {c} | `inplace_predict` | {i[0]:,.0f} rps | {i[1]:.2f} ms | {i[2]:.3f} ms |",
            f"| {c} | dense C entry point | {d[0]:,.0f} rps | {d[1]:.2f} ms | {d[2]:.3f} ms |",
            f"| {c} | ratio | {d[0] / i[0]:.2f} | {d[1] / i[1]:.2f} | {d[2] / i[2]:.2f} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args(argv)
    repo = build_repository(args.build)
    out = args.build / "xgb_ab"
    for i, order in enumerate((list(VARIANTS), list(VARIANTS)[::-1])):
        sweep.main([
            "--build", str(args.build), "--repository", str(repo), "--models", ",".join(order),
            "--delays", "0", "--instances", "1", "--preferred", "none",
            "--concurrency", "1,32", "--repeats", str(args.repeats),
            "--duration", str(args.duration), "--json", str(out / f"ab-{i}.json"),
        ])  # fmt: skip
    print(summarize([json.loads((out / f"ab-{i}.json").read_text()) for i in range(2)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

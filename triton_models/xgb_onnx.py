"""An XGBoost forest as an ONNX-ML tree ensemble, scored by onnxruntime.

Copied next to the GBDT's ``model.py`` by the repository builder. XGBoost's
prediction entry point has a fixed cost per call that dominates small batches:
it sets up every tree's view of the model on each call, ~75 us warm and ~150
us with cold caches at batch 1 on the dev VM (``python -m
triton_models.xgb_onnx``), and small batches are what a router hands Triton.
onnxruntime's ``TreeEnsembleRegressor`` walks only the nodes a row visits: ~7
us warm and ~30 us cold at batch 1, and no slower up to batch 64 (the models'
``max_batch_size``).

The forest is converted in memory from the same ``xgboost.json`` the FIL
backend serves (no second artifact to keep in sync): each split ``x < t`` goes
left, a missing value follows ``default_left``, the leaves' sum starts at the
logit of ``base_score`` and a Sigmoid gives P(positive), as
``Booster.inplace_predict(x, predict_type="value")`` does for
``binary:logistic``. Float sums in another order differ in the last bits
(<= 1e-6 measured), so the model checks agreement with XGBoost at load within
``PARITY_ATOL`` and keeps XGBoost's own path otherwise.

On clusters whose Triton has the onnxruntime backend but not FIL, the builder
writes the same graph as the version's ``model.onnx`` (``write_forest``) and
Triton serves it with no Python process at all; that is why the graph's tensors
carry the config's names and its IR version is the lowest its opsets allow.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

PARITY_ATOL = 1e-5
"""Largest |onnxruntime - XGBoost| probability accepted at load (the serving
tests' tolerance; float32 sums in another order differ by <= 1e-6)."""

INPUT, OUTPUT = "input__0", "output__0"
"""The graph's tensors: the names in every model config of the repository."""

PROBE_ROWS = (1, 3, 64)
"""Batch sizes of the load-time agreement check (64: the models' max_batch_size)."""

_SIGMOID_OBJECTIVES = frozenset({"binary:logistic", "reg:logistic"})


class UnsupportedForest(ValueError):
    """The model uses something this converter does not translate (another
    objective, categorical splits, DART, several outputs)."""


class ForestMismatch(ValueError):
    """The converted forest's scores differ from XGBoost's by more than
    ``PARITY_ATOL``."""


def _base_margin(learner: dict[str, Any]) -> float:
    raw = str(learner["learner_model_param"]["base_score"]).strip("[]")
    if "," in raw:
        raise UnsupportedForest("a base_score per target")
    p = float(raw)
    if not 0.0 < p < 1.0:
        raise UnsupportedForest(f"base_score {p} is not a probability")
    return math.log(p / (1.0 - p))


def forest_onnx(model: dict[str, Any]) -> bytes:
    """The serialized ONNX model of an XGBoost JSON model (``Booster.save_model``):
    input ``input__0`` float32 [N, F], output ``output__0`` float32 [N, 1],
    P(positive)."""
    from onnx import TensorProto, helper

    learner = model["learner"]
    objective = learner["objective"]["name"]
    if objective not in _SIGMOID_OBJECTIVES:
        raise UnsupportedForest(f"objective {objective!r}")
    booster = learner["gradient_booster"]
    if booster.get("name", "gbtree") != "gbtree":
        raise UnsupportedForest(f"booster {booster.get('name')!r}")
    params = learner["learner_model_param"]
    if int(params.get("num_target", "1")) != 1 or int(params.get("num_class", "0")) > 1:
        raise UnsupportedForest("more than one output")
    trees = booster["model"]["trees"]
    n_features = int(params["num_feature"])

    nodes: dict[str, list[Any]] = {k: [] for k in ("tree", "id", "feat", "value", "mode")}
    branches: dict[str, list[int]] = {"true": [], "false": [], "missing": []}
    leaves: dict[str, list[Any]] = {"tree": [], "id": [], "weight": []}
    for t, tree in enumerate(trees):
        if any(tree.get("split_type", [])) or tree.get("categories"):
            raise UnsupportedForest("categorical splits")
        left, right = tree["left_children"], tree["right_children"]
        cond, feat, default_left = (
            tree["split_conditions"],
            tree["split_indices"],
            tree["default_left"],
        )
        for n in range(len(left)):
            nodes["tree"].append(t)
            nodes["id"].append(n)
            leaf = left[n] == -1
            # A leaf's value sits in split_conditions (XGBoost's JSON schema).
            nodes["feat"].append(0 if leaf else int(feat[n]))
            nodes["value"].append(0.0 if leaf else float(cond[n]))
            nodes["mode"].append("LEAF" if leaf else "BRANCH_LT")
            branches["true"].append(0 if leaf else int(left[n]))
            branches["false"].append(0 if leaf else int(right[n]))
            branches["missing"].append(0 if leaf else int(bool(default_left[n])))
            if leaf:
                leaves["tree"].append(t)
                leaves["id"].append(n)
                leaves["weight"].append(float(cond[n]))

    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        [INPUT],
        ["margin"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        base_values=[_base_margin(learner)],
        nodes_treeids=nodes["tree"],
        nodes_nodeids=nodes["id"],
        nodes_featureids=nodes["feat"],
        nodes_values=nodes["value"],
        nodes_modes=nodes["mode"],
        nodes_truenodeids=branches["true"],
        nodes_falsenodeids=branches["false"],
        nodes_missing_value_tracks_true=branches["missing"],
        target_treeids=leaves["tree"],
        target_nodeids=leaves["id"],
        target_ids=[0] * len(leaves["id"]),
        target_weights=leaves["weight"],
    )
    # onnxruntime ignores the regressor's post_transform: an explicit Sigmoid.
    sigmoid = helper.make_node("Sigmoid", ["margin"], [OUTPUT])
    graph = helper.make_graph(
        [ensemble, sigmoid],
        "xgboost_forest",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, 1])],
    )
    # The lowest IR version these opsets allow (8), not the installed onnx's
    # newest: older onnxruntimes (Triton's backend) refuse newer IR versions.
    onnx_model = helper.make_model_gen_version(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        producer_name="inferline.xgb_onnx",
    )
    return bytes(onnx_model.SerializeToString())


class OnnxForest:
    """``predict(x: float32[N, F]) -> float32[N]`` through one onnxruntime session."""

    def __init__(self, onnx_bytes: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One thread, sequential: on small hosts spinning intra-op threads
        # double CPU per request and starve Triton's own threads.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self._run = session.run
        self._outputs = [OUTPUT]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self._run(self._outputs, {INPUT: x})[0]).reshape(-1)


def probe_batches(
    model: dict[str, Any], n_features: int, rows: tuple[int, ...] = PROBE_ROWS, seed: int = 0
) -> list[np.ndarray]:
    """Batches of ``rows`` rows that take the forest's real branches: each value
    is one of its feature's split thresholds, exactly (goes right) or just below
    it (goes left), or missing; a feature no tree splits on is 0. Random normal
    rows would miss most splits of features with large ranges (amounts, counts)."""
    thresholds: list[list[float]] = [[] for _ in range(n_features)]
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for feat, cond, left in zip(
            tree["split_indices"], tree["split_conditions"], tree["left_children"], strict=True
        ):
            if left != -1:
                thresholds[int(feat)].append(float(cond))
    rng = np.random.default_rng(seed)
    out = []
    for n in rows:
        x = np.zeros((n, n_features), dtype=np.float32)
        for j, ts in enumerate(thresholds):
            if ts:
                t = np.asarray(ts, dtype=np.float32)[rng.integers(0, len(ts), n)]
                below = np.nextafter(t, np.float32(-np.inf))
                x[:, j] = np.where(rng.random(n) < 0.5, t, below)
        x[rng.random(x.shape) < 0.1] = np.nan
        out.append(x)
    return out


def agrees(predict: Any, reference: Any, batches: list[np.ndarray]) -> float:
    """The largest |predict - reference| over ``batches``; raises ``ValueError``
    on a shape mismatch."""
    worst = 0.0
    for x in batches:
        got = np.asarray(predict(x), dtype=np.float32).reshape(-1)
        want = np.asarray(reference(x), dtype=np.float32).reshape(-1)
        if got.shape != want.shape:
            raise ValueError(f"{got.shape[0]} scores for {want.shape[0]} rows")
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def checked_forest(
    path: str,
    reference: Callable[[np.ndarray], Any],
    n_features: int,
    threads: int = 1,
    probe_rows: tuple[int, ...] = PROBE_ROWS,
    rows: np.ndarray | None = None,
) -> tuple[bytes, OnnxForest, float]:
    """The forest of the XGBoost JSON at ``path``: its ONNX graph, that graph on
    onnxruntime, and its largest difference from ``reference`` (XGBoost itself)
    on the probe batches and ``rows``. Raises ``UnsupportedForest``,
    ``ForestMismatch`` (over ``PARITY_ATOL``), or what reading the file or
    onnxruntime raises."""
    with open(path, "rb") as f:
        model = json.load(f)
    graph = forest_onnx(model)
    forest = OnnxForest(graph, threads)
    batches = probe_batches(model, n_features, probe_rows)
    if rows is not None:
        batches.append(np.ascontiguousarray(rows, dtype=np.float32))
    worst = agrees(forest, reference, batches)
    if worst > PARITY_ATOL:
        raise ForestMismatch(f"differs from XGBoost by {worst:.2e}")
    return graph, forest, worst


def load_forest(
    path: str,
    reference: Callable[[np.ndarray], Any],
    n_features: int,
    threads: int = 1,
    probe_rows: tuple[int, ...] = PROBE_ROWS,
) -> tuple[OnnxForest | None, str]:
    """Load time, in the Python backend: the checked forest (``checked_forest``)
    on onnxruntime, or None, and why, for the model's log line. Never raises:
    any failure leaves the caller on XGBoost's own path."""
    try:
        _, forest, worst = checked_forest(path, reference, n_features, threads, probe_rows)
    except ForestMismatch as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors are not RuntimeErrors
        return None, f"unusable ({type(e).__name__}: {e})"
    return forest, f"agrees with XGBoost within {worst:.1e}"


def write_forest(
    json_path: str,
    out_path: str,
    reference: Callable[[np.ndarray], Any],
    n_features: int,
    rows: np.ndarray | None = None,
) -> float:
    """Build time, for Triton's onnxruntime backend: write the checked forest's
    graph (``checked_forest``, probe batches and ``rows``) to ``out_path``;
    returns its largest difference from XGBoost. Raises as ``checked_forest``
    does and writes nothing then: no Python process checks it again at load."""
    graph, _, worst = checked_forest(json_path, reference, n_features, rows=rows)
    with open(out_path, "wb") as f:
        f.write(graph)
    return worst


def main(argv: list[str] | None = None) -> int:
    """Time XGBoost's C entry point and the ONNX forest, warm and with the caches
    flushed before each call: ``python -m triton_models.xgb_onnx [MODEL.json]``."""
    import xgboost as xgb

    from triton_models.xgb_dense import DensePredictor

    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "build/model_repository/fraud/1/xgboost.json"
    with open(path, "rb") as f:
        model = json.load(f)
    booster = xgb.Booster(model_file=path)
    booster.set_param({"nthread": 1})
    n_features = booster.num_features()
    dense = DensePredictor(booster, n_features)
    forest = OnnxForest(forest_onnx(model))
    diff = agrees(forest, dense, probe_batches(model, n_features, (1, 3, 64, 1000)))
    print(f"{path}: max |onnx - xgboost| = {diff:.2e} over probe batches")
    rng = np.random.default_rng(1)
    junk = np.ones(2 << 20)  # 16 MiB: larger than the last-level cache share
    print("| batch | XGBoost C entry, warm | ONNX forest, warm | XGBoost, cold | ONNX, cold |")
    print("| --- | --- | --- | --- | --- |")
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        x = rng.random((n, n_features), dtype=np.float32)
        cells = []
        for fn in (dense, forest):
            for _ in range(300):
                fn(x)
            t0 = time.perf_counter()
            for _ in range(2000):
                fn(x)
            warm = (time.perf_counter() - t0) / 2000 * 1e6
            cold = []
            for _ in range(300):
                junk += 1.0
                t0 = time.perf_counter()
                fn(x)
                cold.append(time.perf_counter() - t0)
            cells.append((warm, float(np.median(cold)) * 1e6))
        (dw, dc), (ow, oc) = cells
        print(f"| {n} | {dw:.1f} us | {ow:.1f} us | {dc:.1f} us | {oc:.1f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

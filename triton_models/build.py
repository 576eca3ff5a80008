"""Train the demo models and write the Triton model repository.

Training data is built from the same deterministic feature tables Feast serves
(``feast_repo.data``), joined by entity id, plus synthetic request-time features
and labels drawn from a fixed nonlinear logistic function. Everything is seeded,
so artifacts are byte-identical across builds.

Each version directory gets its artifact, ``metadata.json`` (feature schema in
tensor order, its hash, training defaults and ranges, training-data hash,
offline metrics, provenance) and, for Python-backend models, ``model.py``.
Each model gets the best backend the target Triton has (``choose_backend``):

- the GBDT: FIL on ``xgboost.json``; else onnxruntime on the forest converted
  to ONNX at build time (``model.onnx``, checked against XGBoost); else the
  Python backend on ``xgboost.json``;
- the DNN: onnxruntime on ``model.onnx``; else the Python backend on the same
  file.

The Python backend is the fallback of each: it is the only one the pytriton
build here has, and it serves the same artifacts with the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import string
import subprocess
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import xgboost as xgb
from onnx import TensorProto, helper, numpy_helper
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from feast_repo.data import DEFAULT_SEED, VIEWS_BY_NAME, feature_values
from router.observability.profile import drift_reference, quality_profile
from router.pipeline.schema import feature_schema_hash
from triton_models.onnx_io import INPUT, OUTPUT, ort_refusal
from triton_models.xgb_onnx import ForestMismatch, UnsupportedForest, write_forest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_HELPERS: dict[str, tuple[str, ...]] = {"fraud": ("xgb_dense.py", "xgb_onnx.py")}
"""Modules copied next to a Python-backend model's ``model.py`` besides batched.py."""
TRAIN_ROWS = 20_000
MAX_BATCH_SIZE = 64
# Picked by the p95 budget from the sweep (bench/sweep.py, docs/benchmarks-batching.md):
# with no queue delay Triton still batches whatever queued while an instance was
# busy, so throughput at concurrency 32 matches the best setting within noise,
# and light traffic pays no wait.
MAX_QUEUE_DELAY_US = 0
Kind = Literal["gbdt", "dnn"]
Backend = Literal["fil", "onnxruntime", "python", "auto"]
PREFERENCE: dict[str, tuple[str, ...]] = {
    "gbdt": ("fil", "onnxruntime", "python"),
    "dnn": ("onnxruntime", "python"),
}
"""Backends each kind of model can be served by, best first."""


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [rows, features], tensor column order
    y: np.ndarray  # int labels
    features: list[dict[str, Any]]  # schema entries without profile data
    entities: dict[str, list[str]]


def _sig(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)))


def _feast_columns(view: str, ids: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    spec = VIEWS_BY_NAME[view]
    table = feature_values(spec).set_index(spec.join_key)
    block = table.loc[ids, list(spec.features)].to_numpy(np.float32)
    schema = [
        {"name": f, "dtype": "float32", "source": "feast", "view": view} for f in spec.features
    ]
    return block, schema


def _request_schema(names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": "float32", "source": "request", "view": None} for n in names]


def fraud_dataset(seed: int = DEFAULT_SEED) -> Dataset:
    rng = np.random.default_rng([seed, 101])
    spec = VIEWS_BY_NAME["account_features"]
    ids = rng.integers(1, spec.n_entities + 1, TRAIN_ROWS)
    acct, schema = _feast_columns("account_features", ids)
    col = {s["name"]: acct[:, i].astype(np.float64) for i, s in enumerate(schema)}
    amount = rng.gamma(2.0, 40.0, TRAIN_ROWS)
    hour = rng.integers(0, 24, TRAIN_ROWS).astype(np.float64)
    intl = (rng.random(TRAIN_ROWS) < 0.15).astype(np.float64)
    night = ((hour < 6) | (hour >= 23)).astype(np.float64)
    z = (
        -4.2
        + 3.0 * col["prior_risk_score"]
        + 25.0 * col["chargeback_rate_90d"]
        + 0.45 * np.log1p(col["failed_txn_count_24h"])
        + 0.6 * np.log1p(amount / (1.0 + col["avg_amount_30d"]))
        + 0.8 * intl * (col["international_txn_ratio_30d"] < 0.1)
        + 0.7 * night * col["night_txn_ratio_30d"] * 5.0
        - 0.25 * np.log1p(col["account_age_days"] / 30.0)
        + 0.35 * col["failed_login_count_24h"]
        + 0.5 * (col["distinct_devices_30d"] > 2)
    )
    y = (rng.random(TRAIN_ROWS) < _sig(z)).astype(np.int32)
    x = np.column_stack([acct, amount, hour, intl]).astype(np.float32)
    features = schema + _request_schema(["amount", "hour_of_day", "is_international"])
    return Dataset(x, y, features, {"account_features": ["account_id"]})


def ranker_dataset(seed: int = DEFAULT_SEED) -> Dataset:
    rng = np.random.default_rng([seed, 202])
    users = rng.integers(1, VIEWS_BY_NAME["user_features"].n_entities + 1, TRAIN_ROWS)
    items = rng.integers(1, VIEWS_BY_NAME["item_features"].n_entities + 1, TRAIN_ROWS)
    u, u_schema = _feast_columns("user_features", users)
    it, i_schema = _feast_columns("item_features", items)
    uc = {s["name"]: u[:, i].astype(np.float64) for i, s in enumerate(u_schema)}
    ic = {s["name"]: it[:, i].astype(np.float64) for i, s in enumerate(i_schema)}
    position = rng.integers(0, 50, TRAIN_ROWS).astype(np.float64)
    hour = rng.integers(0, 24, TRAIN_ROWS).astype(np.float64)
    affinity = np.sin(users * 0.37 + items * 0.11)  # stands in for user x item taste
    z = (
        -2.0
        + 40.0 * ic["item_ctr_7d"]
        + 25.0 * uc["user_ctr_30d"]
        + 0.6 * (ic["item_rating_avg"] - 3.6)
        - 0.35 * np.log1p(position)
        + 0.5 * affinity * np.log1p(uc["user_clicks_7d"]) / 3.0
        - 0.3 * np.log1p(ic["item_price"]) * (uc["user_is_premium"] < 0.5)
        + 0.4 * ((hour >= 18) & (hour <= 22))
        + 0.2 * np.log1p(ic["item_discount_pct"])
    )
    y = (rng.random(TRAIN_ROWS) < _sig(z)).astype(np.int32)
    x = np.column_stack([u, it, position, hour]).astype(np.float32)
    features = u_schema + i_schema + _request_schema(["position", "hour_of_day"])
    return Dataset(x, y, features, {"user_features": ["user_id"], "item_features": ["item_id"]})


def _split(ds: Dataset) -> tuple[slice, slice]:
    cut = int(len(ds.y) * 0.8)
    return slice(0, cut), slice(cut, None)


def train_fraud(ds: Dataset, version: int) -> tuple[xgb.Booster, dict[str, Any]]:
    params: dict[str, Any] = {
        1: {"max_depth": 6, "eta": 0.1, "seed": 1, "rounds": 200},
        2: {"max_depth": 5, "eta": 0.08, "seed": 2, "rounds": 250},
    }[version]
    rounds = params["rounds"]
    train, test = _split(ds)
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "max_depth": params["max_depth"],
            "eta": params["eta"],
            "seed": params["seed"],
            "nthread": 2,
            "subsample": 0.9,
            "colsample_bytree": 0.9,
        },
        xgb.DMatrix(ds.x[train], label=ds.y[train]),
        num_boost_round=rounds,
    )
    p = booster.inplace_predict(ds.x[test])
    scores = booster.inplace_predict(ds.x[train])
    return booster, {"params": params, "metrics": _metrics(ds.y[test], p), "train_scores": scores}


# XGBoost >= 3.1 writes base_score as a one-element list ("[8.1E-2]"). Treelite
# before its XGBoost 3.1 support (dmlc/treelite#638, Oct 2025), and so the FIL
# backend of Triton 24.x, parses it as a number and refuses the file; a scalar
# string is read by every XGBoost and Treelite.
_LIST_BASE_SCORE = re.compile(rb'"base_score":"\[([^\[\],]+)\]"')


def save_xgboost_json(booster: xgb.Booster, path: Path, check_rows: np.ndarray) -> None:
    """Save ``booster`` as XGBoost JSON that FIL's Treelite also loads.

    The file is reloaded and must score ``check_rows`` exactly as ``booster``.
    """
    booster.save_model(str(path))
    path.write_bytes(_LIST_BASE_SCORE.sub(rb'"base_score":"\1"', path.read_bytes()))
    reloaded = xgb.Booster(model_file=str(path))
    want = booster.inplace_predict(check_rows)
    if not np.array_equal(reloaded.inplace_predict(check_rows), want):
        raise RuntimeError(f"{path}: rewritten model scores differ from the trained booster")


def train_ranker(ds: Dataset) -> tuple[Pipeline, dict[str, Any]]:
    train, test = _split(ds)
    params = {"hidden_layer_sizes": (64, 32), "alpha": 1e-4, "max_iter": 30, "random_state": 7}
    model = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPClassifier(early_stopping=False, **params))]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(ds.x[train], ds.y[train])
    p = model.predict_proba(ds.x[test])[:, 1]
    train_scores = model.predict_proba(ds.x[train])[:, 1]
    return model, {
        "train_scores": train_scores,
        "params": {**params, "hidden_layer_sizes": [64, 32]},
        "metrics": _metrics(ds.y[test], p),
    }


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "auc": round(float(roc_auc_score(y, p)), 6),
        "logloss": round(float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))), 6),
        "base_rate": round(float(y.mean()), 6),
    }


def mlp_to_onnx(model: Pipeline, n_features: int) -> onnx.ModelProto:
    """The scaler + MLP as one ONNX graph on raw features -> P(positive) [N, 1]."""
    scaler: StandardScaler = model.named_steps["scale"]
    mlp: MLPClassifier = model.named_steps["mlp"]
    init = [
        numpy_helper.from_array(np.asarray(scaler.mean_, np.float32), "mean"),
        numpy_helper.from_array(np.asarray(scaler.scale_, np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT, "mean"], ["c"]),
        helper.make_node("Div", ["c", "scale"], ["h0"]),
    ]
    last = "h0"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        init += [
            numpy_helper.from_array(np.asarray(w, np.float32), f"w{i}"),
            numpy_helper.from_array(np.asarray(b, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]),
        ]
        last = f"z{i}"
        if i < len(mlp.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [last], [f"h{i + 1}"]))
            last = f"h{i + 1}"
    nodes.append(helper.make_node("Sigmoid", [last], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "ranker_mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])],
        init,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferline"
    )
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model


def check_onnx(path: Path, model: Pipeline, x: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT: x})[0][:, 0]
    diff = float(np.max(np.abs(got - model.predict_proba(x)[:, 1])))
    if diff > 1e-5:
        raise RuntimeError(f"ONNX export differs from sklearn by {diff}")
    return diff


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def metadata(
    model: str,
    version: int,
    kind: str,
    framework: str,
    artifact: Path,
    ds: Dataset,
    info: dict[str, Any],
) -> dict[str, Any]:
    train, _ = _split(ds)
    x = ds.x[train]
    features = [
        {
            **f,
            "default": float(x[:, j].mean()),
            "min": float(x[:, j].min()),
            "max": float(x[:, j].max()),
        }
        for j, f in enumerate(ds.features)
    ]
    data_hash = hashlib.sha256(ds.x.tobytes() + ds.y.tobytes()).hexdigest()
    for f, prof in zip(features, quality_profile(x, features), strict=True):
        f["profile"] = prof
    return {
        "format": 1,
        "model": model,
        "version": version,
        "kind": kind,
        "framework": framework,
        "artifact": {"file": artifact.name, "sha256": _sha256(artifact)},
        "tensors": {"input": INPUT, "output": OUTPUT, "datatype": "FP32"},
        "entities": ds.entities,
        "features": features,
        "schema_hash": feature_schema_hash(features),
        "default_score": info["metrics"]["base_rate"],
        "drift_reference": drift_reference(x, info["train_scores"]),
        "training": {
            "seed": DEFAULT_SEED,
            "rows": len(ds.y),
            "data_sha256": data_hash,
            "metrics": info["metrics"],
            "params": info["params"],
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_revision": _code_revision(),
        },
    }


def render_config(
    model: str,
    backend: str,
    n_features: int,
    *,
    instances: int = 1,
    response_cache: bool = False,
    kind: str = "KIND_CPU",
) -> str:
    template = (HERE / model / f"config.{backend}.pbtxt.tmpl").read_text()
    return string.Template(template).substitute(
        max_batch_size=MAX_BATCH_SIZE,
        max_queue_delay_us=MAX_QUEUE_DELAY_US,
        n_features=n_features,
        instances=instances,
        kind=kind,
        fil_kind="KIND_AUTO",
        response_cache="true" if response_cache else "false",
    )


def choose_backend(kind: Kind, installed: frozenset[str], wanted: Backend = "auto") -> str:
    """The first of ``kind``'s backends (``PREFERENCE``) that ``installed``
    has, or ``wanted`` when it is one of them and installed."""
    if wanted == "auto":
        return next((b for b in PREFERENCE[kind] if b in installed), "python")
    if wanted not in PREFERENCE[kind]:
        raise RuntimeError(f"a {kind} cannot be served by Triton backend {wanted!r}")
    if wanted not in installed:
        raise RuntimeError(f"Triton backend {wanted!r} is not installed in the target Triton")
    return wanted


def served_backend(model_dir: Path) -> str:
    """The backend (or platform) ``<model_dir>/config.pbtxt`` names, read with
    Triton's own config schema as the registry reads it; "python" without one."""
    from router.backends.triton_repository import read_serving_config

    if not (model_dir / "config.pbtxt").exists():
        return "python"
    return read_serving_config(model_dir)[0].backend


def _write_version(
    repo: Path,
    model: str,
    version: int,
    files: dict[str, Path],
    meta: dict[str, Any],
    python_backend: bool,
) -> None:
    vdir = repo / model / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, vdir / name)
    if python_backend:
        shutil.copyfile(HERE / model / "model.py", vdir / "model.py")
        shutil.copyfile(HERE / "batched.py", vdir / "batched.py")
        for helper in MODEL_HELPERS.get(model, ()):
            shutil.copyfile(HERE / helper, vdir / helper)
    (vdir / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def gbdt_forests(
    training: Path,
    boosters: dict[int, xgb.Booster],
    rows: np.ndarray,
    installed: frozenset[str],
    wanted: Backend = "auto",
) -> tuple[str, dict[int, float]]:
    """The GBDT's backend and, on onnxruntime, each version's forest written as
    ``<training>/fraud_v<N>.onnx`` from ``fraud_v<N>.json`` once it agrees with
    XGBoost on probe batches and ``rows`` (version -> largest difference). A
    forest that does not convert or agree keeps the model off onnxruntime,
    unless that backend was asked for by name."""
    backend = choose_backend("gbdt", installed, wanted)
    if backend != "onnxruntime":
        return backend, {}
    try:
        return backend, {
            v: write_forest(
                str(training / f"fraud_v{v}.json"),
                str(training / f"fraud_v{v}.onnx"),
                b.inplace_predict,
                b.num_features(),
                rows,
            )
            for v, b in boosters.items()
        }
    except (UnsupportedForest, ForestMismatch) as e:
        if wanted == "onnxruntime":
            raise
        print(f"fraud: not on the onnxruntime backend ({e}); Python backend", flush=True)
        return choose_backend("gbdt", installed - {"onnxruntime"}), {}


def _write_fraud(
    repo: Path, training: Path, installed: frozenset[str], gbdt: Backend, response_cache: bool
) -> None:
    """Train and write both fraud versions and the model's config."""
    fraud = fraud_dataset()
    trained = {v: train_fraud(fraud, v) for v in (1, 2)}
    for version, (booster, _) in trained.items():
        save_xgboost_json(booster, training / f"fraud_v{version}.json", fraud.x[:2000])
    boosters = {v: b for v, (b, _) in trained.items()}
    backend, forests = gbdt_forests(training, boosters, fraud.x[:2000], installed, gbdt)
    for version, (_, info) in trained.items():
        source = training / f"fraud_v{version}.json"
        on_ort = version in forests
        artifact = training / f"fraud_v{version}.onnx" if on_ort else source
        meta = metadata("fraud", version, "gbdt", "xgboost", artifact, fraud, info)
        meta["artifact"]["file"] = "model.onnx" if on_ort else "xgboost.json"
        if on_ort:
            meta["artifact"]["converted_from"] = {
                "file": "xgboost.json",
                "sha256": _sha256(source),
                "max_abs_diff": forests[version],
            }
        # The onnxruntime backend's version keeps its source beside model.onnx.
        files = {"xgboost.json": source, meta["artifact"]["file"]: artifact}
        _write_version(repo, "fraud", version, files, meta, python_backend=backend == "python")
    (repo / "fraud" / "config.pbtxt").write_text(
        render_config("fraud", backend, fraud.x.shape[1], response_cache=response_cache)
    )


def build_repository(
    out: Path,
    installed: frozenset[str],
    gbdt: Backend = "auto",
    response_cache: frozenset[str] = frozenset(),
    dnn: Backend = "auto",
) -> Path:
    """Train, export and write ``<out>/model_repository`` (+ ``<out>/training``),
    each model on the best backend in ``installed`` (``choose_backend``)."""
    repo, training = out / "model_repository", out / "training"
    shutil.rmtree(repo, ignore_errors=True)
    training.mkdir(parents=True, exist_ok=True)
    repo.mkdir(parents=True)
    _write_fraud(repo, training, installed, gbdt, "fraud" in response_cache)

    ranker = ranker_dataset()
    model, info = train_ranker(ranker)
    (training / "ranker_v1.pkl").write_bytes(pickle.dumps(model))
    onnx_path = training / "ranker_v1.onnx"
    graph = mlp_to_onnx(model, ranker.x.shape[1])
    onnx.save(graph, str(onnx_path))
    info["metrics"]["onnx_max_abs_diff"] = check_onnx(onnx_path, model, ranker.x[:2000])
    backend = choose_backend("dnn", installed, dnn)
    if backend == "onnxruntime" and (why := ort_refusal(graph)):
        raise RuntimeError(f"ranker: the onnxruntime backend would refuse model.onnx: {why}")
    meta = metadata("ranker", 1, "dnn", "onnx", onnx_path, ranker, info)
    meta["artifact"]["file"] = "model.onnx"
    _write_version(
        repo, "ranker", 1, {"model.onnx": onnx_path}, meta, python_backend=backend == "python"
    )
    for path, kind in (
        (repo / "ranker" / "config.pbtxt", "KIND_CPU"),
        # What a GPU pool loads instead (tritonserver --model-config-name=gpu;
        # models without one fall back to config.pbtxt): the same model on its GPU.
        (repo / "ranker" / "configs" / "gpu.pbtxt", "KIND_GPU"),
    ):
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            render_config(
                "ranker",
                backend,
                ranker.x.shape[1],
                response_cache="ranker" in response_cache,
                kind=kind,
            )
        )
    return repo

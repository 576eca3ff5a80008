"""Triton Python-backend model: XGBoost GBDT scoring, for clusters without FIL.

Loads the same ``xgboost.json`` artifact the FIL backend would serve. All
requests of one ``execute`` call (Triton's dynamic batch) are scored in one
call. By default that call is onnxruntime on the forest converted in memory
(``xgb_onnx``: ~5x cheaper than XGBoost at small batches, agreement with
XGBoost checked at load); the config parameter ``xgboost_predict`` selects
``direct`` (XGBoost's C entry point, ``xgb_dense.DensePredictor``) or
``inplace`` (``Booster.inplace_predict``) instead. Each falls back to the next
when it cannot be used.
"""

from __future__ import annotations

import os
import sys

# The stub embeds the system Python in isolated mode and ignores PYTHONPATH:
# put the launcher's site-packages (NumPy 1.x stub site first) on sys.path.
_paths = os.environ.get("INFERLINE_EXTRA_SITE_PACKAGES", "").split(os.pathsep)
for _p in [os.path.dirname(os.path.abspath(__file__)), *reversed(_paths)]:
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402
from batched import BatchedModel  # type: ignore[import-not-found]  # noqa: E402
from xgb_dense import DensePredictor  # type: ignore[import-not-found]  # noqa: E402
from xgb_onnx import load_forest  # type: ignore[import-not-found]  # noqa: E402


class TritonPythonModel(BatchedModel):
    def load(self, version_dir: str) -> None:
        path = os.path.join(version_dir, "xgboost.json")
        self.booster = xgb.Booster()
        self.booster.load_model(path)
        # One thread: on small hosts extra OpenMP threads spin and starve gRPC.
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        self.booster.set_param({"nthread": threads})
        # config.pbtxt parameter "xgboost_predict": "onnx" (default), "direct"
        # or "inplace" (Booster.inplace_predict: the escape hatch, and the
        # baseline of bench.xgb_ab).
        mode = self.parameters.get("xgboost_predict", {}).get("string_value", "onnx")
        n_features = self.booster.num_features()
        dense = DensePredictor(self.booster, n_features, direct=mode != "inplace")
        if mode != "inplace" and not dense.direct:
            print(
                "fraud: XGBoost's dense C entry point unusable, using inplace_predict",
                file=sys.stderr,
            )
        self.predict = dense
        served = "XGBoost's C entry point" if dense.direct else "inplace_predict"
        if mode == "onnx":
            forest, why = load_forest(path, dense, n_features, threads)
            if forest is not None:
                self.predict, served = forest, "the ONNX forest"
            served += f" (ONNX forest {why})"
        # One line per loaded version in Triton's log: which path serves it.
        print(f"fraud: {version_dir} scores with {served}", file=sys.stderr)

    def score(self, x: np.ndarray) -> np.ndarray:
        # predict_type="value": the sigmoid applied, i.e. P(positive class).
        return self.predict(x)

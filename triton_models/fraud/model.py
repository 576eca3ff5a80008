"""Triton Python-backend model: XGBoost GBDT scoring, for clusters without FIL.

Loads the same ``xgboost.json`` artifact the FIL backend would serve, so the
scores are identical whichever backend a cluster has. All requests of one
``execute`` call (Triton's dynamic batch) are scored in one in-place prediction
(``xgb_dense.DensePredictor``: XGBoost's C entry point without the Python
wrapper's per-call cost, parity-checked against ``inplace_predict`` at load).
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


class TritonPythonModel(BatchedModel):
    def load(self, version_dir: str) -> None:
        self.booster = xgb.Booster()
        self.booster.load_model(os.path.join(version_dir, "xgboost.json"))
        # One thread: on small hosts extra OpenMP threads spin and starve gRPC.
        self.booster.set_param({"nthread": int(os.environ.get("OMP_NUM_THREADS", "1"))})
        # config.pbtxt parameter "xgboost_predict": "direct" (default) or
        # "inplace" (Booster.inplace_predict: the escape hatch, and the baseline
        # of bench.xgb_ab).
        mode = self.parameters.get("xgboost_predict", {}).get("string_value", "direct")
        self.predict = DensePredictor(
            self.booster, self.booster.num_features(), direct=mode != "inplace"
        )
        if mode != "inplace" and not self.predict.direct:
            print(
                "fraud: XGBoost's dense C entry point unusable, using inplace_predict",
                file=sys.stderr,
            )

    def score(self, x: np.ndarray) -> np.ndarray:
        # predict_type="value": the sigmoid applied, i.e. P(positive class).
        return self.predict(x)

"""Triton Python-backend model: XGBoost GBDT scoring, for clusters without FIL.

Loads the same ``xgboost.json`` artifact the FIL backend would serve, so the
scores are identical whichever backend a cluster has. All requests of one
``execute`` call (Triton's dynamic batch) are scored in one ``inplace_predict``.
"""

import os
import sys

# The stub embeds the system Python in isolated mode and ignores PYTHONPATH:
# put the launcher's site-packages (NumPy 1.x stub site first) on sys.path.
_paths = os.environ.get("INFERLINE_EXTRA_SITE_PACKAGES", "").split(os.pathsep)
for _p in [os.path.dirname(os.path.abspath(__file__)), *reversed(_paths)]:
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

import json  # noqa: E402

import xgboost as xgb  # noqa: E402
from batched import execute_batched  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][0])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.booster = xgb.Booster()
        self.booster.load_model(os.path.join(version_dir, "xgboost.json"))
        # One thread: on small hosts extra OpenMP threads spin and starve gRPC.
        self.booster.set_param({"nthread": int(os.environ.get("OMP_NUM_THREADS", "1"))})

    def execute(self, requests):
        return execute_batched(
            requests, self.input_name, self.output_name, self.n_features, self._score
        )

    def _score(self, x):
        return self.booster.inplace_predict(x)

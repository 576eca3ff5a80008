"""XGBoost in-place prediction on a dense float32 batch, through its C API.

Copied next to the GBDT's ``model.py`` by the repository builder. At batch 1
``Booster.inplace_predict`` spends ~135 us per call in Python around the C
call that does the work (a JSON config encoded per call, input checks, and a
class defined per call to read the result back: xgboost 3.2), against ~85 us
for the C call itself on this VM (``python -m triton_models.xgb_dense``). In
the Python backend's stub that wrapper was the largest single cost of a
request. ``DensePredictor`` makes the same call (``XGBoosterPredictFromDense``,
the documented C entry point ``inplace_predict`` uses) with the config encoded
once; at load it checks it returns exactly what ``inplace_predict`` returns,
and falls back to ``inplace_predict`` if the library lacks the entry point or
the check fails.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from typing import Any

import numpy as np

PROBE_ROWS = (1, 3, 64)
"""Batch sizes of the load-time parity check."""


class DensePredictor:
    """``predict(x: float32[N, F]) -> float32[N]``: P(positive) per row, as
    ``booster.inplace_predict(x, predict_type="value")`` returns it."""

    def __init__(self, booster: Any, n_features: int, *, direct: bool = True) -> None:
        self._booster = booster
        self._n_features = n_features
        self.direct = False
        if not direct:  # asked for inplace_predict
            return
        try:
            from xgboost.core import _LIB  # the library xgboost itself loaded

            fn = _LIB.XGBoosterPredictFromDense
        except (ImportError, AttributeError):
            return
        fn.restype = ctypes.c_int
        self._fn = fn
        self._last_error = _LIB.XGBGetLastError
        self._last_error.restype = ctypes.c_char_p
        # inplace_predict's own config for predict_type="value" without margins
        # or an iteration range; missing = NaN (its default).
        self._config = json.dumps(
            {
                "type": 0,
                "training": False,
                "iteration_begin": 0,
                "iteration_end": 0,
                "strict_shape": False,
                "missing": float("nan"),
            },
            allow_nan=True,
        ).encode()
        self._shape = ctypes.POINTER(ctypes.c_uint64)()
        self._dims = ctypes.c_uint64()
        self._out = ctypes.POINTER(ctypes.c_float)()
        self._no_proxy = ctypes.c_void_p()
        self.direct = self._agrees()

    def _agrees(self) -> bool:
        """Same scores as ``inplace_predict`` on probe batches (NaN included)?"""
        rng = np.random.default_rng(0)
        try:
            for n in PROBE_ROWS:
                x = rng.normal(size=(n, self._n_features)).astype(np.float32)
                x[0, 0] = np.nan
                want = np.asarray(self._fallback(x), dtype=np.float32).reshape(-1)
                if not np.array_equal(self._call(x), want):
                    return False
        except (RuntimeError, ValueError, OSError):
            return False
        return True

    def _fallback(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster.inplace_predict(x, predict_type="value"))

    def _call(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        interface = b'{"data": [%d, true], "shape": [%d, %d], "typestr": "<f4", "version": 3}' % (
            x.ctypes.data,
            rows,
            cols,
        )
        rc = self._fn(
            self._booster.handle,
            interface,
            self._config,
            self._no_proxy,
            ctypes.byref(self._shape),
            ctypes.byref(self._dims),
            ctypes.byref(self._out),
        )
        if rc != 0:
            raise RuntimeError((self._last_error() or b"xgboost error").decode())
        # One output column per row (binary:logistic, strict_shape off).
        if self._dims.value != 1 or self._shape[0] != rows:
            shape = [int(self._shape[i]) for i in range(self._dims.value)]
            raise ValueError(f"predictions of shape {shape} for {rows} rows")
        # The buffer belongs to the booster until its next call: copy it out.
        return np.frombuffer(ctypes.string_at(self._out, 4 * rows), dtype=np.float32).copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._call(x) if self.direct else self._fallback(x)


def main(argv: list[str] | None = None) -> int:
    """Time both paths on a model file: ``python -m triton_models.xgb_dense MODEL.json``."""
    import xgboost as xgb

    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "build/model_repository/fraud/1/xgboost.json"
    booster = xgb.Booster()
    booster.load_model(path)
    booster.set_param({"nthread": 1})
    n_features = booster.num_features()
    pred = DensePredictor(booster, n_features)
    print(f"{path}: direct C call {'on' if pred.direct else 'OFF (parity check failed)'}")
    rng = np.random.default_rng(1)
    for n in (1, 64):
        x = rng.normal(size=(n, n_features)).astype(np.float32)
        for name, fn in (("inplace_predict", pred._fallback), ("DensePredictor", pred)):
            for _ in range(300):
                fn(x)
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(2000):
                    fn(x)
                runs.append((time.perf_counter() - t0) / 2000 * 1e6)
            print(f"batch {n:3d} {name:16s} {sorted(runs)[2]:7.1f} us per call (median of 5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

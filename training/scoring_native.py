"""LightGBM's C API for the decision service's scores: the fast predictor of one visit.

``Booster.predict`` re-parses its parameters and converts its input on every call (~100 us);
a visit scores one customer row for churn and a handful of offer rows for uplift, so
``training.scoring.ModelBundle`` calls the C API directly, with the prediction config parsed
once, on its reused float64 buffers. Same boosters and inputs, so the same scores: tests hold
them to ``Booster.predict``'s and to training time's.
"""

from __future__ import annotations

import ctypes

import lightgbm as lgb
import numpy as np


class FastRow:
    """LightGBM's single-row fast path (``LGBM_BoosterPredictForMatSingleRowFast``): the
    prediction config is parsed once, so a row costs a few microseconds instead of the ~100 us
    of ``Booster.predict`` (which re-parses parameters and converts inputs on every call)."""

    def __init__(self, booster: lgb.Booster, ncol: int) -> None:
        from lightgbm.basic import _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL, _LIB, _c_str

        self._lib, self._booster = _LIB, booster  # keep the booster alive as long as we are
        self.handle = ctypes.c_void_p()
        _check(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_int(_C_API_DTYPE_FLOAT64),
                ctypes.c_int32(ncol),
                _c_str("num_threads=1"),
                ctypes.byref(self.handle),
            )
        )
        self._dtype, self._predict_type = _C_API_DTYPE_FLOAT64, _C_API_PREDICT_NORMAL
        self._params = _c_str("num_threads=1")
        self._out = np.zeros(1)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._len = ctypes.c_int64()

    def __call__(self, row: np.ndarray) -> float:
        """Probability for one C-contiguous float64 row."""
        _check(
            self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self.handle,
                row.ctypes.data_as(ctypes.c_void_p),
                ctypes.byref(self._len),
                self._out_ptr,
            )
        )
        return float(self._out[0])

    def many(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities for a small C-contiguous float64 matrix in one C call (a handful of
        offers: cheaper than one fast single-row call each, and than ``Booster.predict``)."""
        out = np.empty(len(rows))
        _check(
            self._lib.LGBM_BoosterPredictForMat(
                self._booster._handle,
                rows.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(self._dtype),
                ctypes.c_int32(rows.shape[0]),
                ctypes.c_int32(rows.shape[1]),
                ctypes.c_int(1),  # row-major
                ctypes.c_int(self._predict_type),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                self._params,
                ctypes.byref(self._len),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        return out

    def __del__(self) -> None:
        if getattr(self, "handle", None) is not None and self.handle.value:
            self._lib.LGBM_FastConfigFree(self.handle)


def _check(ret: int) -> None:
    from lightgbm.basic import _safe_call

    _safe_call(ret)

"""BG/NBD + Gamma-Gamma through ``pymc-marketing`` 0.19: flat priors fitted by MAP, which is
the maximum-likelihood fit ``lifetimes`` made (same parameters to the printed digits on CDNOW),
on a maintained library and in seconds instead of a sampler's minutes."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Btyd:
    """BG/NBD + Gamma-Gamma fitted as of one day."""

    bg: Any
    gg: Any
    params: dict[str, float] = field(default_factory=dict)


def _quiet_pymc() -> None:
    """PyMC's loggers and these libraries' own warnings (priors, the MAP trace) are not the
    user's to act on; other modules' warnings stay as they are."""
    for name in ("pymc", "pytensor", "pymc_marketing", "arviz"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("pymc", "pymc_marketing", "pymc_extras", "pytensor", "arviz", "xarray"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?$")


def fit_btyd(summary: pd.DataFrame) -> Btyd:
    """BG/NBD on (frequency, recency, T) and Gamma-Gamma on the repeat customers' mean spend."""
    _quiet_pymc()
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

    rfm = summary.reset_index()
    flat = {k: Prior("HalfFlat") for k in ("r", "alpha", "a", "b")}
    bg = BetaGeoModel(model_config=flat)
    bg.fit(data=rfm[["customer_id", "frequency", "recency", "T"]], method="map", progressbar=False)
    repeat = rfm.loc[(rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)]
    if len(repeat) < 10:
        raise ValueError("transactions: fewer than 10 customers with repeat purchases to fit on")
    gg = GammaGammaModel()
    gg.fit(
        data=repeat[["customer_id", "frequency", "monetary_value"]],
        method="map",
        progressbar=False,
    )
    params = {k: _scalar(bg.fit_result[k]) for k in ("r", "alpha", "a", "b")}
    params |= {k: _scalar(gg.fit_result[k]) for k in ("p", "q", "v")}
    return Btyd(bg, gg, params)


def _scalar(value: Any) -> float:
    return float(np.asarray(value).ravel()[0])


def btyd_predict(model: Btyd, summary: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """Expected purchase days and value in the next ``horizon_days``, and P(alive)."""
    rfm = summary.reset_index()[["customer_id", "frequency", "recency", "T", "monetary_value"]]
    purchases = _flat(model.bg.expected_purchases(rfm, future_t=horizon_days))
    alive = _flat(model.bg.expected_probability_alive(rfm))
    # Gamma-Gamma's posterior mean spend; with no repeat purchase it is the population mean
    spend = _flat(model.gg.expected_customer_spend(rfm.assign(monetary_value=_gg_value(rfm))))
    return pd.DataFrame(
        {"expected_purchases": purchases, "expected_value": purchases * spend, "p_alive": alive},
        index=summary.index,
    )


def _gg_value(rfm: pd.DataFrame) -> np.ndarray:
    return np.where(rfm["frequency"] > 0, rfm["monetary_value"], 0.0)


def _flat(values: Any) -> np.ndarray:
    return np.asarray(values).reshape(-1)

"""``nextbest uplift train``: Nextbest's uplift model on a data scientist's own experiment table.

The training CSV holds one row per customer of a randomised test: a treatment column, an
outcome column, an id and any number of covariates. Every other column is a model input (text
columns as categories). The model is the one that prices offers in the decision service
(``training.propensity.fit_uplift``), without the offer and channel columns a plain experiment
does not have. The prediction CSV needs the id and the covariates only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from estimation.uplift import UpliftError
from experiments.exports import clean_arms, parse_numeric
from training.scoring import TREATED, Scorer

LEARNERS = ("staged", "s", "t")  # training.propensity.Learner
SERVICE = "csv"  # the spec's feature source: columns of the user's file, not a FeatureService


def _read(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise UpliftError(f"{what}: file {str(path)!r} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UpliftError(f"{what}: {path} is not a readable CSV ({exc})") from exc


def _need(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    for col in columns:
        if col not in frame.columns:
            raise UpliftError(
                f"{what}: column {col!r} is missing (columns: {', '.join(frame.columns)})"
            )


def _covariates(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Numbers where a whole column reads as numbers, text (a category) otherwise."""
    out = {}
    for col in features:
        as_number = pd.to_numeric(frame[col], errors="coerce")
        numeric = as_number.notna() | frame[col].isna()
        out[col] = as_number.astype(float) if numeric.all() else frame[col].astype(object)
    return pd.DataFrame(out, index=frame.index)


def training_frame(
    frame: pd.DataFrame, treatment: str, treated: str, outcome: str, id_col: str
) -> tuple[pd.DataFrame, list[str]]:
    """Model frame (covariates, ``treated`` 0/1, ``label`` 0/1) and its covariate names."""
    _need(frame, [treatment, outcome, id_col], "train")
    arms = clean_arms(frame[treatment], treatment)
    labels = sorted(arms.unique().tolist())
    if treated not in labels:
        raise UpliftError(
            f"column {treatment!r}: treated label {treated!r} not found; labels: {labels}"
        )
    if len(labels) < 2:
        raise UpliftError(
            f"column {treatment!r} has only the treated label {treated!r}: need a control"
        )
    y = parse_numeric(frame[outcome], outcome)
    if not y.isin((0.0, 1.0)).all():
        pos = int((~y.isin((0.0, 1.0))).to_numpy().argmax())
        found = f"found {y.iloc[pos]:g} at line {pos + 2}"
        raise UpliftError(f"column {outcome!r} must be binary (0/1, yes/no); {found}")
    features = [c for c in frame.columns if c not in (treatment, outcome, id_col)]
    if not features:
        raise UpliftError("train: no covariate columns besides treatment, outcome and id")
    out = _covariates(frame, features)
    out[TREATED] = (arms == treated).astype(float).to_numpy()
    out["label"] = y.to_numpy()
    return out.reset_index(drop=True), features


def train_and_predict(
    train_csv: Path,
    treatment: str,
    treated: str,
    outcome: str,
    id_col: str,
    predict_csv: Path,
    out_csv: Path,
    seed: int = 0,
    learner: str = "staged",
) -> dict[str, object]:
    """Fit on ``train_csv``, write ``<id>,uplift`` for every row of ``predict_csv``."""
    from training.propensity import fit_uplift

    if learner not in LEARNERS:
        raise UpliftError(f"learner: {learner!r} is not one of {', '.join(LEARNERS)}")
    frame, features = training_frame(_read(train_csv, "train"), treatment, treated, outcome, id_col)
    test = _read(predict_csv, "predict")
    _need(test, [id_col, *features], "predict")
    scorer, info = fit_uplift(
        frame,
        features,
        SERVICE,
        seed=seed,
        context=(),
        learner=learner,  # type: ignore[arg-type]
    )
    uplift = predict(scorer, _covariates(test, features))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({id_col: test[id_col], "uplift": uplift}).to_csv(out_csv, index=False)
    return {
        "out": str(out_csv),
        "rows": len(test),
        "train_rows": len(frame),
        "treated_share": round(float(frame[TREATED].mean()), 4),
        "features": features,
        "learner": learner,
        "rounds": info["rounds"],
        "mean_uplift": round(float(np.mean(uplift)), 6),
    }


def predict(scorer: Scorer, covariates: pd.DataFrame) -> np.ndarray:
    """Predicted uplift (P(outcome | treated) - P(outcome | control)) per row."""
    return scorer.predict_frame(covariates)["uplift"].to_numpy(float)

"""Scoring shared by training, MLflow and the decision service: one encoder, one bundle format.

A model is a folder with ``spec.json`` (feature order, category vocabularies, learner) and one or
two LightGBM text files. Training writes it, MLflow logs it as a pyfunc artifact, BentoML imports
the champion, and the service scores one visit through LightGBM's C API on preallocated numpy
rows (``training.scoring_native``). Every path encodes with the same vocabularies and column
order from ``spec.json``, and tests hold served scores equal to training-time ones.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import BaseModel

from training.scoring_native import FastRow

if TYPE_CHECKING:
    from nextbest.settings import Settings

MODEL_NAMES = ("churn", "propensity")
OFFER_COLUMNS = ("offer_id", "channel")  # request-time columns of the propensity model
TREATED = "treated"


class ModelSpec(BaseModel):
    """How rows become model inputs; saved next to the boosters."""

    kind: Literal["churn", "propensity"]
    learner: Literal["single", "s", "t"]  # churn: single; uplift: S- or T-learner
    feature_service: str
    features: list[str]  # the FeatureService's features, in model column order
    categories: dict[str, list[str]]  # vocabulary of every string column
    extra: list[str] = []  # columns added after the features (offer_id, channel, treated)
    pos_weight: float = 1.0  # positive-class weight in training; undone by ``unweight``

    @property
    def columns(self) -> list[str]:
        return self.features + self.extra


def fit_categories(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Vocabularies of the string/bool-free object columns (sorted, so codes are stable)."""
    cats: dict[str, list[str]] = {}
    for c in columns:
        col = frame[c]
        values = col.dropna().unique()
        if all(isinstance(v, bool | np.bool_) for v in values):
            continue  # flags are numbers (0/1), whatever dtype pandas gave them
        if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype | pd.StringDtype):
            cats[c] = sorted(str(v) for v in values)
    return cats


def encode(spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray:
    """Model matrix: categories as their vocabulary index (unknown/missing -> NaN), rest float."""
    out = np.empty((len(frame), len(spec.columns)), dtype=np.float64)
    for j, c in enumerate(spec.columns):
        if c in spec.categories:
            lookup = {v: float(i) for i, v in enumerate(spec.categories[c])}
            out[:, j] = [
                lookup.get(str(v), math.nan) if v is not None else math.nan for v in frame[c]
            ]
        elif frame[c].dtype == object:  # bool flags with missing values, numbers as objects
            out[:, j] = [math.nan if v is None or v is pd.NA else float(v) for v in frame[c]]
        else:
            out[:, j] = pd.to_numeric(frame[c], errors="coerce").astype(float).to_numpy()
    return out


def unweight(p: Any, w: float) -> Any:
    """Undo positive-class weight ``w``: weighted training multiplies the odds by ``w``."""
    return p if w == 1.0 else p / (p + w * (1.0 - p))


@dataclass
class Scorer:
    """A loaded model: spec plus boosters, with a fast path for single rows."""

    spec: ModelSpec
    boosters: list[lgb.Booster]
    _lookups: list[dict[str, float] | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lookups = [
            {v: float(i) for i, v in enumerate(self.spec.categories[c])}
            if c in self.spec.categories
            else None
            for c in self.spec.columns
        ]

    @classmethod
    def load(cls, folder: Path) -> Scorer:
        spec = ModelSpec.model_validate_json((folder / "spec.json").read_text())
        files = sorted(folder.glob("booster_*.txt"))
        return cls(spec, [lgb.Booster(model_file=str(f)) for f in files])

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(self.spec.model_dump_json(indent=1))
        for i, b in enumerate(self.boosters):
            b.save_model(str(folder / f"booster_{i}.txt"))
        return folder

    def row(self, features: dict[str, Any], out: np.ndarray) -> None:
        """Encode one feature dict into ``out`` (only the feature columns)."""
        out[: len(self.spec.features)] = self.codes(map(features.get, self.spec.features))

    def codes(self, values: Iterable[Any]) -> list[float]:
        """The first feature columns' inputs for their values, in order (None: missing)."""
        return [
            math.nan if v is None else float(v) if lookup is None else lookup.get(str(v), math.nan)
            for v, lookup in zip(values, self._lookups, strict=False)
        ]

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Batch scores: churn_risk, or p_treated/p_untreated/uplift for (features, offer)."""
        if self.spec.kind == "churn":
            raw = self.boosters[0].predict(encode(self.spec, frame))
            return pd.DataFrame({"churn_risk": unweight(raw, self.spec.pos_weight)})
        p_t, p_u = self._uplift(frame)
        return pd.DataFrame({"p_treated": p_t, "p_untreated": p_u, "uplift": p_t - p_u})

    def _uplift(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if self.spec.learner == "t":
            x = encode(self.spec, frame)
            return self.boosters[0].predict(x), self.boosters[1].predict(x)
        x1 = encode(self.spec, frame.assign(**{TREATED: 1.0}))
        x0 = x1.copy()
        x0[:, -1] = 0.0
        return self.boosters[0].predict(x1), self.boosters[0].predict(x0)


class ModelBundle:
    """The promoted models the decision service scores with (loaded once at start-up).

    Row buffers and LightGBM fast configs are reused between calls, so a lock keeps calls from
    worker threads apart (uncontended, it costs well under a microsecond)."""

    def __init__(self, churn: Scorer | None, propensity: Scorer | None, versions: dict[str, str]):
        self.churn, self.propensity, self.versions = churn, propensity, versions
        self._lock = threading.Lock()
        self._churn_row = np.zeros((1, len(churn.spec.columns))) if churn else None
        self._churn_fast = FastRow(churn.boosters[0], len(churn.spec.columns)) if churn else None
        self._offer_columns = cols = len(propensity.spec.columns) if propensity else 0
        self._offer_fast = [FastRow(b, cols) for b in propensity.boosters] if propensity else []
        self._matrices: dict[int, np.ndarray] = {}  # offer_scores' inputs, by row count
        if propensity:
            spec = propensity.spec
            self._offers = {v: float(i) for i, v in enumerate(spec.categories["offer_id"])}
            self._channels = {v: float(i) for i, v in enumerate(spec.categories["channel"])}

    def churn_risk(self, features: dict[str, Any]) -> float:
        """Probability of churning within 30 days."""
        if self.churn is None or self._churn_row is None or self._churn_fast is None:
            raise LookupError("no churn champion is promoted")
        with self._lock:
            self.churn.row(features, self._churn_row[0])
            raw = self._churn_fast(self._churn_row[0])
        return float(unweight(raw, self.churn.spec.pos_weight))

    def offer_scores(
        self, features: dict[str, Any], channel: str, offer_ids: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Conversion probability per offer if treated and if not (uplift = difference)."""
        scorer = self.propensity
        if scorer is None:
            raise LookupError("no propensity champion is promoted")
        n, spec = len(offer_ids), scorer.spec
        if not n:
            return np.zeros(0), np.zeros(0)
        n_feat = len(spec.features)
        codes = [self._offers.get(o, math.nan) for o in offer_ids]
        channel_code = self._channels.get(channel, math.nan)
        reps = 1 if spec.learner == "t" else 2  # S-learner rows: offer 1 treated, untreated, ...
        with self._lock:
            x = self._matrix(reps * n)
            scorer.row(features, x[0])
            x[1:, :n_feat] = x[0, :n_feat]
            for r in range(reps):
                x[r::reps, n_feat] = codes
            x[:, n_feat + 1] = channel_code
            if reps == 1:  # T-learner: one model per arm
                treated, untreated = self._offer_fast
                return treated.many(x), untreated.many(x)
            p = self._offer_fast[0].many(x)
        return p[0::2], p[1::2]

    def churn_risks(self, many: list[dict[str, Any]]) -> np.ndarray:
        """``churn_risk`` of many customers in one LightGBM call (same scores: tests hold
        them byte-equal to the single-row path)."""
        scorer, fast = self.churn, self._churn_fast
        if scorer is None or fast is None:
            raise LookupError("no churn champion is promoted")
        if not many:
            return np.zeros(0)
        x = np.zeros((len(many), len(scorer.spec.columns)))
        x[:, : len(scorer.spec.features)] = self.feature_rows(scorer, many)
        with self._lock:
            raw = fast.many(x)
        return unweight(raw, scorer.spec.pos_weight)

    def offer_scores_many(
        self, many: list[dict[str, Any]], channels: list[str], offer_ids: list[list[str]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``offer_scores`` of many visits (features, channel, their allowed offers): every
        visit x offer row in one LightGBM call per booster."""
        scorer = self.propensity
        if scorer is None:
            raise LookupError("no propensity champion is promoted")
        spec = scorer.spec
        counts = np.fromiter(map(len, offer_ids), dtype=np.int64, count=len(offer_ids))
        total = int(counts.sum())
        if not total:
            return [(np.zeros(0), np.zeros(0)) for _ in offer_ids]
        n_feat, reps = len(spec.features), 1 if spec.learner == "t" else 2
        feats = self.feature_rows(scorer, many)
        x = np.zeros((reps * total, self._offer_columns))
        x[:, :n_feat] = np.repeat(feats, counts * reps, axis=0)
        nan, offers = math.nan, self._offers
        codes = [offers.get(o, nan) for ids in offer_ids for o in ids]
        chans = [self._channels.get(c, nan) for c in channels]
        for r in range(reps):
            x[r::reps, n_feat] = codes
        x[:, n_feat + 1] = np.repeat(chans, counts * reps)
        if reps == 2:
            x[0::2, -1] = 1.0
        with self._lock:
            if reps == 1:
                treated, untreated = self._offer_fast
                p_t, p_u = treated.many(x), untreated.many(x)
            else:
                p = self._offer_fast[0].many(x)
                p_t, p_u = p[0::2], p[1::2]
        ends = np.cumsum(counts)[:-1]
        return list(zip(np.split(p_t, ends), np.split(p_u, ends), strict=True))

    @staticmethod
    def feature_rows(scorer: Scorer, many: list[dict[str, Any]]) -> np.ndarray:
        """The feature columns of many feature dicts, encoded as ``Scorer.row`` does."""
        names = scorer.spec.features
        if not many:
            return np.zeros((0, len(names)))
        return np.array([scorer.codes(map(f.get, names)) for f in many], dtype=np.float64)

    def _matrix(self, rows: int) -> np.ndarray:
        """A reused C-contiguous input matrix of ``rows`` rows (callers hold the lock); an
        S-learner's last column, ``treated``, alternates 1, 0 and never changes."""
        x = self._matrices.get(rows)
        if x is None:
            x = self._matrices[rows] = np.zeros((rows, self._offer_columns))
            if self.propensity is not None and self.propensity.spec.learner == "s":
                x[0::2, -1] = 1.0
        return x


_installed: dict[str, Any] = {}  # the model store this module installed, by home folder
# A BENTOML_HOME set before Nextbest ran (serving a built Bento, a deployment's own store)
# wins over the project's home: the models the Bento pinned live there.
EXTERNAL_BENTOML_HOME = os.environ.get("BENTOML_HOME")


def bentoml_models(settings: Settings) -> Any:
    """``bentoml.models`` over the store in the project's home (``settings.bentoml_home``),
    unless BENTOML_HOME was set from outside and names another store.

    BENTOML_HOME is read once per process, so when the home changes (tests, several settings)
    the store provider is pointed at the new folder. A store chosen by someone else (a built
    Bento being served installs its own) is left alone: the champions travel inside the Bento.
    """
    home = str(settings.bentoml_home)
    if EXTERNAL_BENTOML_HOME and Path(EXTERNAL_BENTOML_HOME).resolve() != Path(home).resolve():
        import bentoml

        return bentoml.models
    os.environ.setdefault("BENTOML_HOME", home)
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore
    from simple_di import _SentinelClass

    provider = BentoMLContainer.model_store
    override = provider._override  # simple_di keeps a .set() value here
    if not isinstance(override, _SentinelClass) and override not in _installed.values():
        return bentoml.models
    if isinstance(override, _SentinelClass) and BentoMLContainer.bentoml_home.get() == home:
        return bentoml.models
    if home not in _installed:
        (settings.bentoml_home / "models").mkdir(parents=True, exist_ok=True)
        _installed[home] = ModelStore(str(settings.bentoml_home / "models"))
    BentoMLContainer.bentoml_home.set(home)
    provider.set(_installed[home])
    return bentoml.models


def bundle_dir(bento_model: Any) -> Path:
    """The spec + boosters folder inside a BentoML model imported from MLflow."""
    return Path(bento_model.path_of("mlflow_model")) / "artifacts" / "bundle"


def load_bundle(settings: Settings) -> ModelBundle | None:
    """The champions from the BentoML model store, or None when nothing is promoted."""
    models = bentoml_models(settings)
    loaded: dict[str, Scorer | None] = {}
    versions: dict[str, str] = {}
    for name in MODEL_NAMES:
        try:
            bento_model = models.get(f"{name}:latest")
        except Exception:  # bentoml.exceptions.NotFound: nothing promoted yet
            loaded[name] = None
            continue
        loaded[name] = Scorer.load(bundle_dir(bento_model))
        versions[name] = str(bento_model.info.metadata.get("mlflow_version", bento_model.tag))
    if not versions:
        return None
    return ModelBundle(loaded["churn"], loaded["propensity"], versions)

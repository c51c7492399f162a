"""The uplift league: Nextbest's uplift model against the meta-learners a data scientist would
pick instead (CausalML's S, T, X, R and DR learners on LightGBM), on the same rows.

Data sets: the simulator's campaign exposures (time split as in training; the truth gives each
row's true uplift, so Pearson correlation pooled and within an offer) and the randomised
Hillstrom e-mail test (Womens E-Mail or any e-mail vs none; visit and conversion; a seeded
2-fold cross-fit: every row predicted by a model that never saw it). Every model is scored by
the Qini coefficient of ``experiments.qini`` on the held-out rows, with a paired bootstrap
interval of Nextbest's Qini minus the best peer's.
Peers get the same covariate matrix, LightGBM settings close to ours and the known treatment
share as propensity (the data are randomised). ``causalml`` is in the ``bench`` extra only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from rich.progress import Progress
from scipy.stats import pearsonr

from experiments.qini import qini_curve
from nextbest.settings import Settings
from training.evaluate import paired_bootstrap
from training.propensity import fit_uplift, within_group_pearson
from training.scoring import TREATED, ModelSpec, encode, fit_categories

# the real data sets live beside the project (../shared/data) unless NEXTBEST_SHARED_DATA says
SHARED_DATA = Path(
    os.environ.get("NEXTBEST_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
HILLSTROM_COVARIATES = ["recency", "history", "mens", "womens", "zip_code", "newbie", "channel"]
PEERS = ("S", "T", "X", "R", "DR")
NEXTBEST = "nextbest"
PEER_LGBM: dict[str, Any] = {  # close to training.propensity.PARAMS, at a fixed 100 rounds
    "n_estimators": 100,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 40,
    "reg_lambda": 5.0,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "n_jobs": 1,
    "verbose": -1,
}


class LeagueError(ValueError):
    """A league that cannot run (a missing peer library or data file), in one line."""


@dataclass
class Dataset:
    """Train and test rows of one randomised comparison; ``truth`` only on the simulator."""

    name: str
    train: pd.DataFrame  # covariates, ``treated`` 0/1, ``label`` 0/1 (+ customer_id)
    test: pd.DataFrame
    features: list[str]
    context: tuple[str, ...] = ()  # request-time columns after the features (offer, channel)
    truth: np.ndarray | None = None
    groups: np.ndarray | None = None  # offer per test row, for the within-offer correlation
    folds: np.ndarray | None = None  # cross-fitting: test = all rows, each fold predicted by
    # a model fitted on the others (halves the noise of one held-out split on the same data)

    def splits(self) -> list[tuple[Dataset, np.ndarray]]:
        """(train/test pair, positions in ``test``) per fit: one, or one per fold."""
        if self.folds is None:
            return [(self, np.arange(len(self.test)))]
        out = []
        for f in np.unique(self.folds):
            held = self.folds == f
            part = Dataset(
                name=self.name,
                train=self.test.loc[~held].reset_index(drop=True),
                test=self.test.loc[held].reset_index(drop=True),
                features=self.features,
                context=self.context,
            )
            out.append((part, np.flatnonzero(held)))
        return out


def _peer(name: str, seed: int) -> Any:
    """One CausalML meta-learner on LightGBM."""
    from causalml.inference.meta import (
        BaseDRClassifier,
        BaseRClassifier,
        BaseSClassifier,
        BaseTClassifier,
        BaseXClassifier,
    )
    from lightgbm import LGBMClassifier, LGBMRegressor

    def clf() -> LGBMClassifier:
        return LGBMClassifier(**PEER_LGBM, random_state=seed)

    def reg() -> LGBMRegressor:
        return LGBMRegressor(**PEER_LGBM, random_state=seed)

    return {
        "S": lambda: BaseSClassifier(learner=clf()),
        "T": lambda: BaseTClassifier(learner=clf()),
        "X": lambda: BaseXClassifier(outcome_learner=clf(), effect_learner=reg()),
        "R": lambda: BaseRClassifier(
            outcome_learner=clf(), effect_learner=reg(), random_state=seed
        ),
        "DR": lambda: BaseDRClassifier(
            control_outcome_learner=clf(),
            treatment_outcome_learner=clf(),
            treatment_effect_learner=reg(),
        ),
    }[name]()


def peer_uplift(name: str, data: Dataset, seed: int) -> np.ndarray:
    """Fit peer ``name`` on the train rows, predict the test rows' uplift."""
    columns = data.features + list(data.context)
    spec = ModelSpec(
        kind="propensity",
        learner="t",
        feature_service="bench",
        features=columns,
        categories=fit_categories(data.train, columns),
    )
    x, x_test = encode(spec, data.train), encode(spec, data.test)
    t = data.train[TREATED].to_numpy(int)
    y = data.train["label"].to_numpy(float)
    share = float(t.mean())  # randomised: the propensity is the treated share
    model = _peer(name, seed)
    kwargs = {"p": np.full(len(x_test), share)} if name in ("X", "R", "DR") else {}
    # CausalML's R-learner asks for every core (n_jobs=-1): worker processes cost more than
    # they save on these sizes, and the other learners run on one thread too
    with joblib.parallel_config(backend="sequential"):
        seeded = {"seed": seed} if name == "DR" else {}  # its cross-fitting folds
        model.fit(X=x, treatment=t, y=y, p=np.full(len(t), share), **seeded)
        pred = model.predict(x_test, **kwargs)
    return np.asarray(pred, float).reshape(len(x_test), -1)[:, 0]


def nextbest_uplift(data: Dataset, seed: int) -> np.ndarray:
    """Nextbest's uplift model (the one that prices offers) fitted as training fits it."""
    scorer, _ = fit_uplift(data.train, data.features, "bench", seed=seed, context=data.context)
    return scorer.predict_frame(data.test)["uplift"].to_numpy(float)


def hillstrom_datasets(csv: Path, seed: int) -> list[Dataset]:
    """Womens E-Mail vs No E-Mail and any e-mail vs none, on visit and on conversion."""
    raw = pd.read_csv(csv)
    missing = [c for c in [*HILLSTROM_COVARIATES, "segment", "visit", "conversion"] if c not in raw]
    if missing:
        raise LeagueError(f"hillstrom: column {missing[0]!r} is missing from {csv}")
    rng = np.random.default_rng(seed)
    out = []
    for arm, keep in (
        ("womens", raw["segment"].isin(["Womens E-Mail", "No E-Mail"])),
        ("any", raw["segment"].notna()),
    ):
        rows = raw.loc[keep].reset_index(drop=True)
        frame = rows[HILLSTROM_COVARIATES].copy()
        for col in ("zip_code", "channel"):
            frame[col] = frame[col].astype(object)
        frame[TREATED] = (rows["segment"] != "No E-Mail").astype(int).to_numpy()
        folds = rng.integers(0, 2, len(frame))
        for outcome in ("visit", "conversion"):
            labelled = frame.assign(label=rows[outcome].to_numpy(int))
            out.append(
                Dataset(
                    name=f"hillstrom {arm} e-mail, {outcome}",
                    train=labelled,
                    test=labelled,
                    features=list(HILLSTROM_COVARIATES),
                    folds=folds,
                )
            )
    return out


def simulator_dataset(settings: Settings, customers: int, seed: int) -> Dataset:
    """The training exposures of a simulated world of ``customers`` (built once, then reused
    from ``<home>/bench/uplift-<customers>-<seed>``), split by time as training splits them."""
    from features.build import build_features
    from features.store import apply_repo, get_store
    from simulator.world import simulate_world
    from training.datasets import propensity_frames

    home = settings.home / "bench" / f"uplift-{customers}-{seed}"
    world = settings.model_copy(update={"home": home, "customers": customers, "seed": seed})
    ready = home / "features" / ".built"
    if not ready.exists():
        world.ensure_dirs()
        simulate_world(customers, settings.days, seed, world.world_dir)
        build_features(world)
        apply_repo(get_store(world))
        ready.write_text("simulated, features built and applied\n")
    frames = propensity_frames(world)
    valid = frames.valid
    truth = (valid["true_p_treated"] - valid["true_p_untreated"]).to_numpy(float)
    return Dataset(
        name=f"simulator ({customers:,} customers)",
        train=frames.train,
        test=valid,
        features=frames.features,
        context=("offer_id", "channel"),
        truth=truth,
        groups=valid["offer_id"].to_numpy(),
    )


def score(data: Dataset, uplift: np.ndarray) -> dict[str, float | None]:
    """Qini on the held-out rows; with truth, correlation pooled and within an offer."""
    t = data.test[TREATED].to_numpy(float)
    y = data.test["label"].to_numpy(float)
    out: dict[str, float | None] = {
        "qini": qini_curve(uplift, t, y, "m").qini,
        "mean_uplift": float(uplift.mean()),
    }
    if data.truth is not None:
        out["pearson"] = float(pearsonr(uplift, data.truth)[0]) if np.ptp(uplift) else 0.0
        out["pearson_within_offer"] = within_group_pearson(uplift, data.truth, data.groups)
        out["share_positive"] = float((uplift > 0).mean())
    return out


def qini_advantage(data: Dataset, ours: np.ndarray, theirs: np.ndarray) -> list[float]:
    """95% paired bootstrap interval of our Qini minus the peer's, on the same test rows."""
    t = data.test[TREATED].to_numpy(float)
    y = data.test["label"].to_numpy(float)

    def diff(idx: np.ndarray) -> float:
        return (
            qini_curve(ours[idx], t[idx], y[idx], "a").qini
            - qini_curve(theirs[idx], t[idx], y[idx], "b").qini
        )

    return [round(v, 6) for v in paired_bootstrap(diff, len(y), draws=200, seed=0)]


def run_dataset(data: Dataset, seed: int, progress: Progress) -> tuple[dict[str, Any], dict]:
    """Every model on one data set: scores, the best peer and our margin over it."""
    task = progress.add_task(data.name, total=1 + len(PEERS))
    preds: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name in (NEXTBEST, *PEERS):
        progress.update(task, description=f"{data.name}: {name}")
        t0 = time.perf_counter()
        preds[name] = np.zeros(len(data.test))
        for part, rows in data.splits():
            fit = nextbest_uplift if name == NEXTBEST else partial(peer_uplift, name)
            preds[name][rows] = fit(part, seed)
        seconds[name] = round(time.perf_counter() - t0, 2)
        progress.advance(task)
    models = {k: {**score(data, v), "fit_seconds": seconds[k]} for k, v in preds.items()}
    key = "pearson" if data.truth is not None else "qini"
    best = max(PEERS, key=lambda k: models[k][key] or -np.inf)
    result: dict[str, Any] = {
        "train_rows": len(data.train) if data.folds is None else len(data.test),
        "test_rows": len(data.test),
        "split": "time" if data.folds is None else f"{len(np.unique(data.folds))}-fold cross-fit",
        "treated_share": round(float(data.test[TREATED].mean()), 4),
        "outcome_rate": round(float(data.test["label"].mean()), 5),
        "models": {k: {m: _round(v) for m, v in s.items()} for k, s in models.items()},
        "ranked_by": key,
        "best_peer": best,
        "nextbest_minus_best_peer_qini_ci": qini_advantage(data, preds[NEXTBEST], preds[best]),
        "nextbest_at_least_best_peer": bool(models[NEXTBEST][key] >= models[best][key]),
    }
    if data.truth is not None:
        result["true_mean_uplift"] = round(float(data.truth.mean()), 6)
        result["true_share_positive"] = round(float((data.truth > 0).mean()), 4)
        result["oracle_qini"] = _round(score(data, data.truth)["qini"])
    return result, preds


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


def plot_league(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """One panel of Qini curves per data set (the models and random targeting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, item) in zip(axes.flat, curves.items(), strict=False):
        for model, c in item.items():
            style = {"lw": 2.2, "color": "k"} if model == NEXTBEST else {"lw": 1}
            ax.plot(c.fraction, c.incremental, label=f"{model} ({c.qini:.4f})", **style)
        first = next(iter(item.values()))
        ax.plot(first.fraction, first.random, "k:", lw=1, label="random")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="share targeted", ylabel="incremental outcomes")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_league(
    settings: Settings, customers: int = 20_000, hillstrom: Path | None = None, seed: int = 7
) -> dict[str, Any]:
    """The league table: every data set available, every model, one JSON-ready dict."""
    try:
        import causalml  # noqa: F401
    except ImportError as exc:
        raise LeagueError(
            "causalml is not installed: pip install -e '.[bench]' (the peers' library)"
        ) from exc
    skipped: dict[str, str] = {}
    csv = hillstrom or SHARED_DATA / "hillstrom.csv.gz"
    if hillstrom is not None and not hillstrom.exists():
        raise LeagueError(f"--csv: {hillstrom} does not exist")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"nextbest": NEXTBEST, "peers": [f"causalml {p}" for p in PEERS]}
    tables: dict[str, Any] = {}
    curves: dict[str, dict[str, Any]] = {}
    with Progress(transient=True) as progress:
        datasets: list[Dataset] = []
        if customers:
            task = progress.add_task(f"simulator world of {customers:,} customers", total=None)
            datasets.append(simulator_dataset(settings, customers, seed))
            progress.remove_task(task)
        if csv.exists():
            datasets += hillstrom_datasets(csv, seed)
        else:
            skipped["hillstrom"] = f"{csv} not found (pass --csv PATH)"
        for data in datasets:
            tables[data.name], preds = run_dataset(data, seed, progress)
            t = data.test[TREATED].to_numpy(float)
            y = data.test["label"].to_numpy(float)
            curves[data.name] = {k: qini_curve(v, t, y, k) for k, v in preds.items()}
    out["datasets"] = tables
    out["skipped"] = skipped
    out["plot"] = str(plot_league(curves, settings.reports_dir / "uplift_league.png"))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out

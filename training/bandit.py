"""The contextual-bandit offer policy: VW ``cb_explore_adf`` over customer x offer features.

One formatter (:func:`format_example`) writes the multi-line VW example for both ``choose`` and
``learn``, with fixed namespaces: ``u`` customer features (the ``offer_v1`` FeatureService),
``c`` channel and visit context, ``a`` the offer's catalogue features, ``s`` the uplift models'
expected incremental value of the offer (what arbitration ranks by). ``-q ua -q ca`` lets
customer and context features change each offer's value; without them VW would learn one
ranking for everyone. The action set is the allowed one (eligibility, caps and consent are
applied by the serving policy first), and the probability returned is the one the offer was
drawn with, so the ledger's propensity is the true logging probability.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import vowpalwabbit

from nextbest.settings import Settings

Exploration = Literal["squarecb", "epsilon"]
_UNSAFE = re.compile(r"[\s|:]+")
BINS = True
_FREE_TEXT = {"name", "headline", "body", "cta", "description", "title", "text"}
# one weight per customer and offer would memorise noise, not generalise
_IDENTIFIERS = {"customer_id", "person_id"}


def _token(x: object) -> str:
    """A VW-safe feature name or value: no spaces, bars or colons."""
    return _UNSAFE.sub("_", str(x)) or "_"


def _bucket(x: float) -> int:
    """A third-of-an-octave bin of a number: lets a linear learner bend (spend 0 vs 20 vs 500)."""
    return round(math.copysign(math.log2(1.0 + abs(x)) * 3.0, x))


def _features(values: Mapping[str, Any], bins: bool = False) -> str:
    """Numbers as ``name:value`` (scaled by VW's normalised updates) and, with ``bins``, also as
    a bin indicator ``name#bin``; text as ``name=value``."""
    parts: list[str] = []
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            parts.append(f"{_token(name)}:{int(v)}")
        elif isinstance(v, int | float | np.integer | np.floating):
            f = float(v)
            if math.isfinite(f) and f != 0.0:
                parts.append(f"{_token(name)}:{f:.6g}")
            if bins and math.isfinite(f):
                parts.append(f"{_token(name)}#{_bucket(f)}")
        elif isinstance(v, str | np.str_):
            parts.append(f"{_token(name)}={_token(v)}")
        elif isinstance(v, list | tuple):  # e.g. the basket: one indicator per item
            parts.extend(f"{_token(name)}={_token(x)}" for x in v if isinstance(x, str))
    return " ".join(parts)


def format_example(
    features: Mapping[str, Any],
    channel: str,
    context: Mapping[str, Any],
    actions: Sequence[tuple[str, Mapping[str, Any]]],
    label: tuple[int, float, float] | None = None,
    scores: Mapping[str, float] | None = None,
) -> list[str]:
    """The one VW ADF example: a shared line, then one line per allowed offer.

    Offer numbers (value, cost) sit in ``v``, outside the interactions: crossed with customer
    features they would tie every offer's model to its price (measured: 0.83 -> 0.87 of the gap
    closed with exact rewards when each offer learns on its own id instead).

    ``label`` is (index of the shown offer in ``actions``, cost, logged probability) when learning.
    ``scores`` are arbitration's expected incremental values per offer (the uplift model's), in
    reward units: namespace ``s``, outside the interactions, so one weight learns how far to
    trust the model and the bandit starts from its ranking instead of from nothing.
    """
    context_part = f"channel={_token(channel)} {_features(context)}".rstrip()
    customer = {k: v for k, v in features.items() if k not in _IDENTIFIERS}
    lines = [f"shared |u {_features(customer, BINS)} |c {context_part}"]
    for i, (offer_id, attrs) in enumerate(actions):
        head = f"0:{label[1]:.6g}:{label[2]:.6g} " if label is not None and i == label[0] else ""
        text = _features({k: v for k, v in attrs.items() if isinstance(v, str)})
        line = f"{head}|a offer={_token(offer_id)} {text}".rstrip()
        numbers = _features({k: v for k, v in attrs.items() if not isinstance(v, str)})
        line = f"{line} |v {numbers}" if numbers else line
        score = (scores or {}).get(offer_id)
        if score is not None and math.isfinite(score) and score != 0.0:
            line += f" |s uplift:{score:.6g}"
        lines.append(line)
    return lines


def vw_args(exploration: Exploration, seed: int, epsilon: float = 0.05) -> str:
    """Command line of a fresh learner; the choices are measured with ``nextbest replay``.

    A conversion is rare and worth 25-200, so one reward says little: VW's default learning
    rate (0.5) lets a few lucky or unlucky draws swing an offer's estimate, 0.1 averages them.
    SquareCB keeps near-best offers' probabilities well above epsilon-greedy's floor, so their
    importance weights stay small and noisy rewards do not overturn them (gap closed over the
    last 2,600 of 13,000 replayed visits, sampled outcomes, mean over seeds: epsilon 0.05 0.30
    (7 seeds); SquareCB 0.45 (11); gamma scale 30 instead of 10: 0.49 (10 seeds) but 0.47
    against 0.66 in one pair of 50,000-visit replays, so VW's default stays).
    """
    explore = "--squarecb" if exploration == "squarecb" else f"--epsilon {epsilon}"
    return f"--cb_explore_adf {explore} -q ua -q ca -l 0.1 --quiet --random_seed {seed}"


def offer_features(catalog: Any) -> dict[str, dict[str, Any]]:
    """Action features per offer from the catalogue: its scalar attributes except free text."""
    out: dict[str, dict[str, Any]] = {}
    for offer in catalog.offers:
        attrs = offer.model_dump() if hasattr(offer, "model_dump") else dict(offer)
        offer_id = str(attrs.pop("offer_id", attrs.pop("id", None)))
        out[offer_id] = {
            k: v
            for k, v in attrs.items()
            if k not in _FREE_TEXT and isinstance(v, bool | int | float | str)
        }
    return out


class BanditPolicy:
    """A VW contextual bandit restricted to the allowed offers, returning its true distribution."""

    def __init__(
        self,
        actions: Mapping[str, Mapping[str, Any]],
        *,
        version: str = "untrained",
        model_path: Path | None = None,
        exploration: Exploration = "epsilon",
        reward_scale: float = 1.0,
        seed: int = 7,
        epsilon: float = 0.05,
    ) -> None:
        if reward_scale <= 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        self.actions = {k: dict(v) for k, v in actions.items()}
        self.base_version = version
        self.exploration: Exploration = exploration
        self.reward_scale = float(reward_scale)
        self.updates = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # a VW workspace is not safe across threads
        args = self.args = vw_args(exploration, seed, epsilon)
        if model_path is not None:
            args = f"--quiet -i {model_path}"
        self._vw = vowpalwabbit.Workspace(args)

    @property
    def version(self) -> str:
        """The loaded model version, plus the incremental updates applied since it was loaded."""
        return self.base_version if not self.updates else f"{self.base_version}+{self.updates}"

    def _scaled(self, scores: Mapping[str, float] | None) -> dict[str, float] | None:
        """Scores in the units of the costs VW learns (reward / ``reward_scale``)."""
        if not scores:
            return None
        return {o: float(v) / self.reward_scale for o, v in scores.items() if v is not None}

    def _actions(self, allowed: Sequence[str]) -> list[tuple[str, Mapping[str, Any]]]:
        unknown = [a for a in allowed if a not in self.actions]
        if unknown:
            raise ValueError(f"allowed: offers not in the catalogue: {unknown}")
        return [(a, self.actions[a]) for a in allowed]

    def distribution(
        self,
        features: Mapping[str, Any],
        channel: str,
        context: Mapping[str, Any],
        allowed: Sequence[str],
        scores: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """The exploration distribution over the allowed offers (sums to 1). ``scores``: the
        arbitration's expected incremental value per offer (see :func:`format_example`)."""
        if not allowed:
            return {}
        example = format_example(
            features, channel, context, self._actions(allowed), scores=self._scaled(scores)
        )
        with self._lock:
            pmf = np.asarray(self._vw.predict(example), dtype=float)
        pmf = np.clip(pmf, 0.0, None)
        pmf /= pmf.sum()
        return dict(zip(allowed, pmf.tolist(), strict=True))

    def choose(
        self,
        features: Mapping[str, Any],
        channel: str,
        context: Mapping[str, Any],
        allowed: Sequence[str],
        scores: Mapping[str, float] | None = None,
    ) -> tuple[str | None, dict[str, float]]:
        """Draw an offer among ``allowed``; the returned probabilities are the ones drawn from."""
        probs = self.distribution(features, channel, context, allowed, scores)
        if not probs:
            return None, {}
        p = np.fromiter(probs.values(), dtype=float, count=len(probs))
        i = int(self._rng.choice(len(p), p=p))
        return allowed[i], probs

    def learn(
        self,
        features: Mapping[str, Any],
        channel: str,
        context: Mapping[str, Any],
        allowed: Sequence[str],
        offer_id: str,
        probability: float,
        reward: float,
        scores: Mapping[str, float] | None = None,
    ) -> None:
        """One update from a logged decision: the offer shown, its logged probability, reward,
        and the scores the decision saw. Forced choices (one allowed offer) are skipped: they
        only teach the baseline."""
        if offer_id not in allowed:
            raise ValueError(f"offer_id: {offer_id!r} is not among the allowed offers")
        if not 0 < probability <= 1:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        if len(allowed) < 2:  # a forced choice says nothing about which offer is better
            return
        cost = -reward / self.reward_scale
        label = (list(allowed).index(offer_id), cost, probability)
        example = format_example(
            features, channel, context, self._actions(allowed), label, self._scaled(scores)
        )
        with self._lock:
            self._vw.learn(example)
            self.updates += 1

    def save(self, path: Path) -> Path:
        """Write the VW model (it keeps its own command line, so ``-i`` restores it whole)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._vw.save(str(path))
        return path


# --- learning from the ledger ------------------------------------------------------------


def logged_examples(
    logs: pd.DataFrame, outcomes: pd.DataFrame, costs: Mapping[str, float], attribution_days: int
) -> pd.DataFrame:
    """Decisions the bandit can learn from, each with its reward.

    Reward = the customer's conversion value within the attribution window after the decision
    (``conversion`` outcomes of the decision, plus ``revenue`` reported for the decision or the
    customer) minus the offer's cost when the offer itself converted (a ``conversion`` outcome).
    Counting the customer's other spending makes the reward's expectation differ between offers
    by exactly their incremental value, so the bandit learns uplift, not who buys anyway.
    Holdout rows, forced choices (one allowed offer), rows without an offer or propensity, and
    rows without the logged feature snapshot (``scores["features"]``) are left out. Forced
    choices matter: caps leave heavy visitors only ``no_offer``, and learning those rows would
    credit ``no_offer`` with the baseline spending of the people who visit most.
    """
    cols = ["decision_id", "ts", "features", "channel", "context", "allowed", "offer_id"]
    cols += ["propensity", "probabilities", "reward", "scores"]
    if logs.empty:
        return pd.DataFrame(columns=cols)
    df = logs[(logs["arm"] == "treatment") & logs["offer_id"].notna() & logs["propensity"].notna()]
    df = df[df["probabilities"].map(len) >= 2]  # forced choices: see BanditPolicy.learn
    df = df.assign(features=[_snapshot(r) for r in df.itertuples(index=False)])
    df = df[df["features"].notna()].copy()
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    value = pd.Series(0.0, index=df["decision_id"])
    converted = pd.Series(False, index=df["decision_id"])
    if not outcomes.empty:
        o = outcomes[outcomes["type"].isin(["conversion", "revenue"])]
        o = o.assign(ts=pd.to_datetime(o["ts"], utc=True))
        keys = df[["decision_id", "customer_id", "ts"]].rename(columns={"ts": "ts_decision"})
        linked = o[o["decision_id"].notna()].merge(keys.drop(columns="customer_id"))
        by_customer = (
            o[o["decision_id"].isna() & o["customer_id"].notna()]
            .drop(columns="decision_id")
            .merge(keys.dropna(subset=["customer_id"]), on="customer_id")
        )
        both = pd.concat(
            [linked.assign(linked=True), by_customer.assign(linked=False)], ignore_index=True
        )
        window = pd.Timedelta(days=attribution_days)
        both = both[both["linked"] | (both["ts"] >= both["ts_decision"])]
        both = both[both["ts"] <= both["ts_decision"] + window]
        value = value.add(both.groupby("decision_id")["value"].sum(), fill_value=0.0)
        hit = both.loc[both["type"] == "conversion", "decision_id"].unique()
        converted[converted.index.isin(hit)] = True
    cost = df["offer_id"].map(lambda x: float(costs.get(x, 0.0))).to_numpy()
    ids = df["decision_id"]
    df["reward"] = ids.map(value).to_numpy() - cost * ids.map(converted).to_numpy()
    df["context"] = df["context"].map(lambda c: {k: v for k, v in c.items() if k != "features"})
    df["allowed"] = df["probabilities"].map(lambda p: list(p))
    df["scores"] = df["scores"].map(_model_values)
    return df[cols].sort_values("ts").reset_index(drop=True)


def feature_snapshot(features: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a decision's features, logged with it so the bandit can be
    retrained from the ledger on exactly what it saw (timestamps and the like are dropped)."""
    return {
        k: (v.item() if isinstance(v, np.generic) else v)
        for k, v in features.items()
        if isinstance(v, bool | int | float | str | np.generic)
        and not (isinstance(v, float) and not math.isfinite(v))
    }


def _snapshot(row: Any) -> dict[str, Any] | None:
    """The customer features the decision saw, logged with it (scores, else context)."""
    for holder in (row.scores, row.context):
        if isinstance(holder, dict) and isinstance(holder.get("features"), dict):
            return holder["features"]
    return None


def _model_values(scores: Any) -> dict[str, float] | None:
    """The arbitration's expected incremental values logged with a decision, if any."""
    value = scores.get("value") if isinstance(scores, dict) else None
    return value if isinstance(value, dict) and value else None


def fit(policy: BanditPolicy, examples: pd.DataFrame) -> BanditPolicy:
    """One pass over logged examples in time order (what the policy would have seen online)."""
    for r in examples.itertuples(index=False):
        policy.learn(
            r.features, r.channel, r.context, r.allowed, r.offer_id, r.propensity, r.reward,
            getattr(r, "scores", None),
        )  # fmt: skip
    return policy


def logged_distribution(policy: Any, row: Any) -> dict[str, float]:
    """A policy's distribution for a logged example (a row of :func:`logged_examples`): the
    bandit also gets the model scores the decision saw; fixed policies take no scores."""
    args = (row.features, row.channel, row.context, row.allowed)
    if isinstance(policy, BanditPolicy):
        return policy.distribution(*args, getattr(row, "scores", None))
    return policy.distribution(*args)


def target_probabilities(policy: Any, examples: pd.DataFrame) -> np.ndarray:
    """The evaluated policy's probability of each logged offer, over the logged allowed set."""
    return np.array(
        [
            logged_distribution(policy, r).get(r.offer_id, 0.0)
            for r in examples.itertuples(index=False)
        ]
    )


# --- lifecycle: train from the ledger, register in MLflow, serve from BentoML ---------------


class BanditError(ValueError):
    """Training or loading the bandit cannot go on; the message says why."""


MODEL_NAME = "bandit"
FORMAT_VERSION = 3  # bump whenever format_example changes: old weights would mean other things
MIN_EXAMPLES = 50


def catalog_actions(settings: Settings) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Action features and cost per offer, from the one offer catalogue."""
    from serving.catalog import load_catalog

    catalog = load_catalog()
    return offer_features(catalog), {o.id: float(o.cost) for o in catalog.offers}


def ledger_examples(settings: Settings, since: datetime | None = None) -> pd.DataFrame:
    """The learnable rows of the decision ledger, with rewards."""
    from experiments.ledger import Ledger
    from nextbest.db import engine_for

    ledger = Ledger(engine_for(settings.ledger_db_url))
    _, costs = catalog_actions(settings)
    return logged_examples(
        ledger.logs(since=since), ledger.outcomes_frame(), costs, settings.attribution_days
    )


def reward_scale(rewards: np.ndarray) -> float:
    """A typical non-zero reward size, so VW's costs stay near [-1, 1] whatever the currency."""
    nonzero = np.abs(rewards[rewards != 0])
    return float(np.quantile(nonzero, 0.9)) if nonzero.size else 1.0


def train_bandit(
    settings: Settings,
    promote: bool,
    *,
    recent_share: float = 0.2,
    examples: Any = None,
    champion: BanditPolicy | None | Literal["store"] = "store",
) -> dict[str, Any]:
    """Retrain from the ledger; promote when OPE on recent logs says it beats the champion.

    The challenger learns on the older logs and is judged, with the champion, on the recent
    ones it has not seen (SNIPS with the logged propensities); then it learns the recent ones too.
    ``champion``: the promoted model in the store by default; the replay passes its own (or
    None before its first promotion), so a champion left by an earlier run does not judge it.
    """
    from experiments.ope import ips, snips

    data = ledger_examples(settings) if examples is None else examples
    if len(data) < MIN_EXAMPLES:
        raise BanditError(
            f"ledger: {len(data)} learnable decisions (treatment, offer shown, propensity and "
            f"feature snapshot logged), need at least {MIN_EXAMPLES}"
        )
    actions, _ = catalog_actions(settings)
    cut = int(len(data) * (1 - recent_share))
    old, recent = data.iloc[:cut], data.iloc[cut:]
    scale = reward_scale(data["reward"].to_numpy(float))
    fresh = BanditPolicy(
        actions,
        version="challenger",
        exploration=settings.bandit_exploration,
        reward_scale=scale,
        seed=settings.seed,
        epsilon=settings.epsilon,
    )
    challenger = fit(fresh, old)
    r, p = recent["reward"].to_numpy(float), recent["propensity"].to_numpy(float)
    ope: dict[str, Any] = {"challenger": snips(r, p, target_probabilities(challenger, recent))}
    ope["logging"] = ips(r, p, p)
    if champion == "store":
        try:
            champion = load_bandit(settings)
        except BanditError:  # a champion of an older example format cannot be scored: replace it
            champion = None
    if champion is not None:
        ope["champion"] = snips(r, p, target_probabilities(champion, recent))
    fit(challenger, recent)
    better = champion is None or ope["challenger"].value >= ope["champion"].value
    version = register(settings, challenger, ope, n=len(data), promote=promote and better)
    return {
        "model": MODEL_NAME,
        "version": version,
        "examples": len(data),
        "evaluated_on": len(recent),
        "reward_scale": scale,
        "exploration": challenger.exploration,
        "ope": {k: v.model_dump() for k, v in ope.items()},
        "beats_champion": better,
        "promoted": promote and better,
    }


def _mlflow(settings: Settings) -> Any:
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(MODEL_NAME) is None:
        art = settings.home / "mlartifacts" / MODEL_NAME
        mlflow.create_experiment(MODEL_NAME, artifact_location=art.as_uri())
    mlflow.set_experiment(MODEL_NAME)
    return mlflow


def _meta(policy: BanditPolicy) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "actions": policy.actions,
        "exploration": policy.exploration,
        "reward_scale": policy.reward_scale,
    }


def register(
    settings: Settings, policy: BanditPolicy, ope: dict[str, Any], n: int, promote: bool
) -> str:
    """Log the model to MLflow, register a version (alias ``challenger``), and when promoted
    make it ``champion`` and import it into the BentoML model store the service loads from."""
    mlflow = _mlflow(settings)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        model = policy.save(Path(tmp) / "model.vw")
        mlflow.log_params({"exploration": policy.exploration, "examples": n})
        mlflow.log_params({"reward_scale": policy.reward_scale, "vw": policy.args})
        mlflow.log_metrics({f"ope_{k}": float(v.value) for k, v in ope.items()})
        mlflow.log_metrics({f"ope_{k}_ess": float(v.ess or 0.0) for k, v in ope.items()})
        mlflow.log_artifact(str(model), artifact_path=MODEL_NAME)
        mlflow.log_dict(_meta(policy), f"{MODEL_NAME}/meta.json")
        if not client.search_registered_models(f"name='{MODEL_NAME}'"):
            client.create_registered_model(MODEL_NAME)
        mv = client.create_model_version(
            MODEL_NAME, source=f"{run.info.artifact_uri}/{MODEL_NAME}", run_id=run.info.run_id
        )
    client.set_registered_model_alias(MODEL_NAME, "challenger", mv.version)
    if promote:
        client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
        to_bentoml(settings, policy, str(mv.version))
    return str(mv.version)


def to_bentoml(settings: Settings, policy: BanditPolicy, version: str) -> str:
    """Copy the champion into the BentoML model store (what ``serve`` and ``load_bandit`` read)."""
    from training.scoring import bentoml_models

    meta = {**_meta(policy), "mlflow_version": version}
    with bentoml_models(settings).create(MODEL_NAME, metadata=meta) as bento_model:
        policy.save(Path(bento_model.path_of("model.vw")))
        Path(bento_model.path_of("meta.json")).write_text(json.dumps(_meta(policy)))
    return str(bento_model.tag)


def _from_folder(folder: Path, version: str, seed: int) -> BanditPolicy:
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise BanditError(
            f"{version}: written with example format {meta.get('format')}, this code reads "
            f"format {FORMAT_VERSION}; retrain with `nextbest train bandit --promote`"
        )
    return BanditPolicy(
        meta["actions"],
        version=version,
        model_path=folder / "model.vw",
        exploration=meta["exploration"],
        reward_scale=meta["reward_scale"],
        seed=seed,
    )


def load_bandit(settings: Settings) -> BanditPolicy | None:
    """The promoted bandit from the BentoML model store, or None when none is promoted."""
    from training.scoring import bentoml_models

    try:
        bento_model = bentoml_models(settings).get(f"{MODEL_NAME}:latest")
    except Exception:  # bentoml.exceptions.NotFound: nothing promoted yet
        return None
    version = bento_model.info.metadata.get("mlflow_version", "?")
    folder = Path(bento_model.path_of("model.vw")).parent
    return _from_folder(folder, f"{MODEL_NAME}:{version}", settings.seed)


def load_registered(settings: Settings, alias: str) -> BanditPolicy | None:
    """A registered version by alias (``challenger``/``champion``), straight from MLflow."""
    mlflow = _mlflow(settings)
    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, alias)
    except Exception:  # no such model or alias yet
        return None
    folder = Path(mlflow.artifacts.download_artifacts(mv.source))
    return _from_folder(folder, f"{MODEL_NAME}:{mv.version}", settings.seed)

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

import functools
import math
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pylibvw  # VW's native binding, under vowpalwabbit.pyvw: see BanditPolicy._predict
import vowpalwabbit
from vowpalwabbit import PredictionType

Exploration = Literal["squarecb", "epsilon"]
LEARNING_RATE = 0.05  # see vw_args
# what every learner of the served bandit's examples uses besides its explorer
LEARNER = f"-q ua -q ca -l {LEARNING_RATE}"
_UNSAFE = re.compile(r"[\s|:]+")
_FREE_TEXT = {"name", "headline", "body", "cta", "description", "title", "text"}
# one weight per customer and offer would memorise noise, not generalise
IDENTIFIERS = frozenset({"customer_id", "person_id"})


def _token(x: object) -> str:
    """A VW-safe feature name or value: no spaces, bars or colons."""
    return _safe(x) if type(x) is str else _safe(str(x))


@functools.lru_cache(maxsize=8192)
def _safe(text: str) -> str:
    # names and category values repeat on every example: the regex runs once per string
    return _UNSAFE.sub("_", text) or "_"


_NAMES: dict[str, str] = {}  # feature name -> its token: the same few dozen names every row


def _name(name: object) -> str:
    """:func:`_token` of a feature name, remembered (a dict lookup costs less than the call)."""
    safe = _token(name)
    if type(name) is str and len(_NAMES) < 8192:
        _NAMES[name] = safe
    return safe


def _number(parts: list[str], name: str, f: float) -> None:
    if math.isfinite(f) and f != 0.0:
        parts.append(f"{name}:{f:.6g}")


def _features(values: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> str:
    """Numbers as ``name:value`` (scaled by VW's normalised updates), text as ``name=value``.
    Numbers are not also binned: a bin indicator per third of an octave, crossed with every
    offer, gave each offer hundreds of weights that a few thousand noisy rewards cannot set
    (gap closed over 20,000 replayed visits, 4 seeds: 0.47 with bins, 0.59 without; with
    SquareCB's gamma scale 30, 0.45 with one run collapsing to 0.09, against 0.68). Names in
    ``skip`` are left out."""
    parts: list[str] = []
    names = _NAMES
    for name, v in values.items():
        if v is None or name in skip:
            continue
        t = type(v)
        if t is float or t is int:  # the common case first (exact types: bool is not int here)
            f = float(v)
            if f != 0.0 and math.isfinite(f):  # _number inlined: runs for every number
                safe = names.get(name) if type(name) is str else None
                parts.append(f"{safe or _name(name)}:{f:.6g}")
        elif t is str:
            safe = names.get(name) if type(name) is str else None
            parts.append(f"{safe or _name(name)}={_safe(v)}")
        elif isinstance(v, bool):
            parts.append(f"{_token(name)}:{int(v)}")
        elif isinstance(v, int | float | np.integer | np.floating):
            _number(parts, _token(name), float(v))
        elif isinstance(v, str | np.str_):
            parts.append(f"{_token(name)}={_token(v)}")
        elif isinstance(v, list | tuple):  # e.g. the basket: one indicator per item
            parts.extend(f"{_token(name)}={_token(x)}" for x in v if isinstance(x, str))
    return " ".join(parts)


def action_line(offer_id: str, attrs: Mapping[str, Any]) -> str:
    """An offer's line without label and score: fixed per catalogue offer, so a policy builds
    it once (text attributes in ``a``, numbers in ``v``)."""
    text = _features({k: v for k, v in attrs.items() if isinstance(v, str)})
    line = f"|a offer={_token(offer_id)} {text}".rstrip()
    numbers = _features({k: v for k, v in attrs.items() if not isinstance(v, str)})
    return f"{line} |v {numbers}" if numbers else line


def format_example(
    features: Mapping[str, Any],
    channel: str,
    context: Mapping[str, Any],
    actions: Sequence[tuple[str, str]],
    label: tuple[int, float, float] | None = None,
    scores: Mapping[str, float] | None = None,
    priors: Mapping[str, float] | None = None,
) -> list[str]:
    """The one VW ADF example: a shared line, then one line per allowed offer (``actions``:
    offer id and its :func:`action_line`).

    Offer numbers (value, cost) sit in ``v``, outside the interactions: crossed with customer
    features they would tie every offer's model to its price (measured: 0.83 -> 0.87 of the gap
    closed with exact rewards when each offer learns on its own id instead).

    ``label`` is (index of the shown offer in ``actions``, cost, logged probability) when learning.
    ``scores`` are arbitration's expected incremental values per offer (the uplift model's), in
    reward units: namespace ``s``, outside the interactions, so one weight learns how far to
    trust the model and the bandit starts from its ranking instead of from nothing.
    ``priors``: each offer's converting margin, P(convert | shown) x (value - cost) from the
    same model, in reward units, beside it in ``s`` (``pm``): where the model's untreated
    rates are too noisy for its uplift to rank offers, its treated rates still do (the bandit
    league: propensity x margin arbitration closed 0.55 of the gap where uplift ranking
    closed -0.24), and one weight learns how far to trust each.
    """
    context_part = f"channel={_token(channel)} {_features(context)}".rstrip()
    lines = [f"shared |u {_features(features, IDENTIFIERS)} |c {context_part}"]
    scores, priors = scores or {}, priors or {}
    for i, (offer_id, line) in enumerate(actions):
        if label is not None and i == label[0]:
            line = f"0:{label[1]:.6g}:{label[2]:.6g} {line}"
        parts = []
        score = scores.get(offer_id)
        if score is not None and math.isfinite(score) and score != 0.0:
            parts.append(f"uplift:{score:.6g}")
        prior = priors.get(offer_id)
        if prior is not None and math.isfinite(prior) and prior != 0.0:
            parts.append(f"pm:{prior:.6g}")
        if parts:
            line += " |s " + " ".join(parts)
        lines.append(line)
    return lines


def vw_args(exploration: Exploration, seed: int, epsilon: float = 0.05) -> str:
    """Command line of a fresh learner; the choices are measured with ``nextbest replay``.

    A conversion is rare and worth 25-200, so one reward says little: VW's default learning
    rate (0.5) lets a few lucky or unlucky draws swing an offer's estimate, and SquareCB turns
    near-greedy on whatever the estimates say. :data:`LEARNING_RATE` averages more of them
    (the bandit league, gap closed by the served policy over 20,000 visits, seeds 1-6: 0.32 at
    0.05 and at 0.02, 0.17 at 0.1; seeds 1-3 only: 0.23 at 0.01, 0.09 at 0.005; over 50,000
    visits, seeds 1-3: 0.41 at 0.05, 0.39 at 0.02, 0.17 at 0.1). 0.05 rather than 0.02: clean
    signals still come through quickly (tests/training/test_bandit.py's planted worlds).
    SquareCB keeps near-best offers' probabilities well above epsilon-greedy's floor, so their
    importance weights stay small and noisy rewards do not overturn them (gap closed over the
    last 2,600 of 13,000 replayed visits, sampled outcomes, mean over seeds: epsilon 0.05 0.30
    (7 seeds); SquareCB 0.45 (11)). SquareCB's gamma scale 30 (VW's default 10) explores less
    once the estimates settle (20,000 visits, 4 seeds, numbers unbinned: 0.59 at 10, 0.68 at
    30 and better on 3 of 4 seeds, 0.60 at 3; at 100 one run stopped exploring, at 0.04).
    """
    explore = "--squarecb --gamma_scale 30" if exploration == "squarecb" else f"--epsilon {epsilon}"
    return f"--cb_explore_adf {explore} {LEARNER} --quiet --random_seed {seed}"


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
        cold: Mapping[str, int] | None = None,
        cold_start_share: float = 0.05,
        cold_start_examples: int = 100,
    ) -> None:
        if reward_scale <= 0:
            raise ValueError(f"reward_scale must be > 0, got {reward_scale}")
        self.actions = {k: dict(v) for k, v in actions.items()}
        self._lines = {k: action_line(k, v) for k, v in self.actions.items()}
        self._margins = {k: margin(v) for k, v in self.actions.items()}
        # offers in cold start -> times learned as the shown offer (see distribution)
        self.cold = {k: int(v) for k, v in (cold or {}).items()}
        self.cold_start_share = float(cold_start_share)
        self.cold_start_examples = int(cold_start_examples)
        self.base_version = version
        # the time of the last logged decision it learned, when loaded from the store
        self.trained_through: datetime | None = None
        self.exploration: Exploration = exploration
        self.reward_scale = float(reward_scale)
        self.updates = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # a VW workspace is not safe across threads
        args = self.args = vw_args(exploration, seed, epsilon)
        if model_path is not None:
            args = f"--quiet -i {model_path}"
        self._vw = vowpalwabbit.Workspace(args)
        # a multi-line learner that predicts a distribution: _predict's native path applies
        self._native = self._vw._is_multiline() and self._vw.get_prediction_type() in (
            PredictionType.ACTION_PROBS,
            PredictionType.ACTION_SCORES,
        )

    @property
    def version(self) -> str:
        """The loaded model version, plus the incremental updates applied since it was loaded."""
        return self.base_version if not self.updates else f"{self.base_version}+{self.updates}"

    def _scaled(self, scores: Mapping[str, float] | None) -> dict[str, float] | None:
        """Scores in the units of the costs VW learns (reward / ``reward_scale``)."""
        if not scores:
            return None
        return {o: float(v) / self.reward_scale for o, v in scores.items() if v is not None}

    def _priors(self, p_treated: Mapping[str, float] | None) -> dict[str, float] | None:
        """Each offer's converting margin in reward units (see :func:`format_example`)."""
        if not p_treated:
            return None
        return {
            o: float(p) * self._margins.get(o, 0.0) / self.reward_scale
            for o, p in p_treated.items()
            if p is not None
        }

    def add_offers(self, actions: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Take in catalogue offers the model was not trained with, as cold-start arms (their
        action lines, so their decisions can be learned); the ids added."""
        added = [k for k in actions if k not in self._lines]
        for k in added:
            self.actions[k] = dict(actions[k])
            self._lines[k] = action_line(k, self.actions[k])
            self._margins[k] = margin(self.actions[k])
            self.cold[k] = 0
        return added

    def cold_start(self, offers: Sequence[str]) -> dict[str, int]:
        """The offers among ``offers`` in cold start, each with the times it was learned as
        the shown offer: new to the model, or learned fewer than ``cold_start_examples``
        times since it arrived."""
        return {o: self.cold.get(o, 0) for o in offers if o in self.cold or o not in self._lines}

    def _actions(self, allowed: Sequence[str]) -> list[tuple[str, str]]:
        unknown = [a for a in allowed if a not in self._lines]
        if unknown:
            raise ValueError(f"allowed: offers not in the catalogue: {unknown}")
        return [(a, self._lines[a]) for a in allowed]

    def distribution(
        self,
        features: Mapping[str, Any],
        channel: str,
        context: Mapping[str, Any],
        allowed: Sequence[str],
        scores: Mapping[str, float] | None = None,
        p_treated: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """The exploration distribution over the allowed offers (sums to 1). ``scores``: the
        arbitration's expected incremental value per offer, ``p_treated`` the uplift model's
        conversion probability if shown (see :func:`format_example`).

        Offers in cold start (:meth:`cold_start`) get ``cold_start_share`` each (at most an
        even share), and the offers the model knows share the rest as the model ranks them
        among themselves: a new catalogue offer is explored without switching the bandit off,
        and every probability stays the one the offer is drawn with."""
        if not allowed:
            return {}
        cold = self.cold_start(allowed)
        warm = [a for a in allowed if a not in cold] if cold else list(allowed)
        if not warm:  # the model knows none of them: nothing to rank by
            return {a: 1.0 / len(allowed) for a in allowed}
        example = format_example(
            features, channel, context, self._actions(warm), scores=self._scaled(scores),
            priors=self._priors(p_treated),
        )  # fmt: skip
        raw = self._predict(example)
        # plain floats: a handful of offers costs less in Python than in numpy's small arrays
        pmf = [p if p > 0.0 else 0.0 for p in raw]
        share = min(self.cold_start_share, 1.0 / len(allowed))
        scale = (1.0 - share * len(cold)) / sum(pmf)
        probs = {a: p * scale for a, p in zip(warm, pmf, strict=True)}
        return {a: probs.get(a, share) for a in allowed}

    def _predict(self, example: list[str]) -> list[float]:
        """VW's distribution for one example, as ``Workspace.predict`` gives it, through the
        native calls that method makes, without wrapping each line in a pyvw ``Example``
        (~3x cheaper: ~65 -> ~21 us a 5-offer example, the largest part of the bandit stage)."""
        vw = self._vw
        if not self._native:
            with self._lock:
                return list(vw.predict(example))
        text = "\n".join(example).replace("\r", "").strip()  # what pyvw's parse reads
        with self._lock:
            lines = pylibvw.vw._parse(vw, text)
            try:
                pylibvw.vw.predict_multi(vw, lines)
                return lines[0].get_action_scores()
            finally:
                pylibvw.vw._finish_example_multi_ex(vw, lines)

    def _learn(self, example: list[str]) -> None:
        """``Workspace.learn`` of one example through the native calls it makes, as
        :meth:`_predict` (the caller holds the lock)."""
        vw = self._vw
        if not self._native:
            vw.learn(example)
            return
        lines = pylibvw.vw._parse(vw, "\n".join(example).replace("\r", "").strip())
        try:
            pylibvw.vw.learn_multi(vw, lines)
        finally:
            pylibvw.vw._finish_example_multi_ex(vw, lines)

    def choose(
        self,
        features: Mapping[str, Any],
        channel: str,
        context: Mapping[str, Any],
        allowed: Sequence[str],
        scores: Mapping[str, float] | None = None,
        p_treated: Mapping[str, float] | None = None,
    ) -> tuple[str | None, dict[str, float]]:
        """Draw an offer among ``allowed``; the returned probabilities are the ones drawn from."""
        probs = self.distribution(features, channel, context, allowed, scores, p_treated)
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
        p_treated: Mapping[str, float] | None = None,
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
            features, channel, context, self._actions(allowed), label, self._scaled(scores),
            self._priors(p_treated),
        )  # fmt: skip
        with self._lock:
            self._learn(example)
            self.updates += 1
            if offer_id in self.cold:  # learned often enough: the model ranks it from now on
                self.cold[offer_id] += 1
                if self.cold[offer_id] >= self.cold_start_examples:
                    del self.cold[offer_id]

    def save(self, path: Path) -> Path:
        """Write the VW model (it keeps its own command line, so ``-i`` restores it whole)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._vw.save(str(path))
        return path


def margin(attrs: Mapping[str, Any]) -> float:
    """What a conversion of the offer earns: its value minus its cost (0 when not given)."""
    value, cost = attrs.get("value"), attrs.get("cost")
    number = (int, float)
    return (float(value) if isinstance(value, number) else 0.0) - (
        float(cost) if isinstance(cost, number) else 0.0
    )


def cold_offers(bandit: Any, offers: Sequence[str]) -> dict[str, int]:
    """The offers among ``offers`` a bandit explores as cold-start arms, each with the times it
    learned it ({} for one without cold start, or None); ``bandit`` may be the replay's
    wrapper of a policy (its ``policy``)."""
    cold_start = getattr(getattr(bandit, "policy", bandit), "cold_start", None)
    return dict(cold_start(list(offers))) if callable(cold_start) else {}


def feature_snapshot(features: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of a decision's features, logged with it so the bandit can be
    retrained from the ledger on exactly what it saw (timestamps and the like are dropped)."""
    out: dict[str, Any] = {}
    for k, v in features.items():
        t = type(v)
        if t is str or t is int or t is bool or (t is float and math.isfinite(v)):
            out[k] = v  # the common, exact types first; the general rule below
        elif t is datetime:
            continue  # a profile's timestamps (two a row): the general rule drops them too
        elif isinstance(v, bool | int | float | str | np.generic) and not (
            isinstance(v, float) and not math.isfinite(v)
        ):
            out[k] = v.item() if isinstance(v, np.generic) else v
    return out

"""The league's peer policies: what a data scientist would run instead of Nextbest's bandit.

Every peer sees, per treated visit, exactly what the served bandit saw (:class:`LeagueVisit`:
the logged feature snapshot, channel and context, the allowed offers, and the uplift models'
scores), answers with a distribution over the allowed offers (the probabilities the league
draws from, so a logged propensity is the true one), and learns, once a visit's window has
closed, the reward the served learner would have counted. How peers are driven (same visits,
same delay, common random numbers) is :mod:`benchmarks.league`'s part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from serving.policy import epsilon_greedy
from training.bandit import IDENTIFIERS, LEARNER, action_line, format_example, margin


@dataclass(frozen=True)
class LeagueVisit:
    """One treated visit as the served bandit saw it (from its ledger row)."""

    features: dict[str, Any]  # the logged snapshot of the customer's features
    channel: str
    context: dict[str, Any]
    allowed: tuple[str, ...]
    values: dict[str, float]  # arbitration's expected incremental value per allowed offer
    p_treated: dict[str, float]  # the uplift model's conversion probability if shown


class Peer:
    """A policy of the league: fixed rules by default (nothing to learn)."""

    name = "peer"

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        raise NotImplementedError

    def learn(
        self,
        visits: Sequence[LeagueVisit],
        shown: Sequence[str],
        probabilities: Sequence[float],
        rewards: Sequence[float],
    ) -> None:
        """Learn a closed window's decisions (forced choices are left out by the caller)."""


def greedy(scores: Mapping[str, float]) -> dict[str, float]:
    """All mass on the best-scored offer, ties split evenly (exact probabilities)."""
    return epsilon_greedy(scores, 0.0)


class UniformRandom(Peer):
    name = "uniform_random"

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        return [{o: 1.0 / len(v.allowed) for o in v.allowed} for v in visits]


class PropensityValue(Peer):
    """What well-known suites arbitrate by: P(convert | shown) x margin, no uplift."""

    name = "propensity_value"

    def __init__(self, margins: Mapping[str, float]) -> None:
        self.margins = dict(margins)

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        return [
            greedy({o: v.p_treated.get(o, 0.0) * self.margins.get(o, 0.0) for o in v.allowed})
            for v in visits
        ]


class UpliftGreedy(Peer):
    """Nextbest's uplift models alone: the best expected incremental value, no bandit."""

    name = "uplift_greedy"

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        return [greedy({o: v.values.get(o, 0.0) for o in v.allowed}) for v in visits]


class EpsilonGreedy(Peer):
    """The uplift ranking with an epsilon floor (the pipeline's fallback without a bandit)."""

    name = "epsilon_greedy"

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        return [
            epsilon_greedy({o: v.values.get(o, 0.0) for o in v.allowed}, self.epsilon)
            for v in visits
        ]


class Encoder:
    """Dense features for linear bandits: the snapshot, channel and context (text one-hot,
    numbers standardised on the first window seen, clipped to +-5), each offer's model score
    in reward units (0 where not allowed), and a constant."""

    def __init__(self, offers: Sequence[str], scale: float) -> None:
        self.offers = list(offers)
        self.scale = scale
        self.vectorizer: Any = None

    @staticmethod
    def _row(v: LeagueVisit) -> dict[str, Any]:
        row = {**v.features, **v.context, "channel": v.channel}
        return {
            k: (int(x) if isinstance(x, bool) else x)
            for k, x in row.items()
            if k not in IDENTIFIERS and isinstance(x, int | float | str)
        }

    def transform(self, visits: Sequence[LeagueVisit]) -> np.ndarray:
        from sklearn.feature_extraction import DictVectorizer

        rows = [self._row(v) for v in visits]
        if self.vectorizer is None:  # the first window: what is known before learning
            self.vectorizer = DictVectorizer(sparse=False).fit(rows)
            x = self.vectorizer.transform(rows)
            self.mean, sd = x.mean(axis=0), x.std(axis=0)
            self.sd = np.where(sd > 1e-9, sd, 1.0)
        x = np.clip((self.vectorizer.transform(rows) - self.mean) / self.sd, -5.0, 5.0)
        scores = np.array(
            [[v.values.get(o, 0.0) / self.scale for o in self.offers] for v in visits]
        ).reshape(len(visits), len(self.offers))
        return np.hstack([x, scores, np.ones((len(visits), 1))])


class LinearBandit(Peer):
    """LinUCB or linear Thompson sampling from ``mabwiser`` (a ridge model per offer over
    :class:`Encoder`'s features), restricted to the allowed offers.

    LinUCB plays its highest upper bound (ties split). Thompson sampling's probability of an
    offer has no closed form, so ``draws`` posterior samples are taken per visit and the offer
    is drawn from their argmaxes: playing one of ``draws`` independent posterior samples
    picked at random is still one posterior sample (the policy is Thompson sampling), and
    the share of samples an offer won is the exact probability it was shown with."""

    def __init__(
        self,
        kind: Literal["linucb", "lints"],
        offers: Sequence[str],
        scale: float,
        seed: int,
        alpha: float = 1.0,
        draws: int = 32,
    ) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        self.name = "linucb" if kind == "linucb" else "lin_thompson"
        if alpha != 1.0:  # mabwiser's default; another width is named by it
            self.name += f"_alpha{alpha:g}"
        self.kind = kind
        self.offers = list(offers)
        self.encoder = Encoder(offers, scale)
        self.scale = scale
        self.draws = draws if kind == "lints" else 1
        learning = (
            LearningPolicy.LinUCB(alpha=alpha, l2_lambda=1.0)
            if kind == "linucb"
            else LearningPolicy.LinTS(alpha=alpha, l2_lambda=1.0)
        )
        self.mab = MAB(arms=list(offers), learning_policy=learning, seed=seed)
        self.fitted = False

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        x = self.encoder.transform(visits)
        if not self.fitted:  # nothing learned: every offer alike
            return UniformRandom().distributions(visits)
        m = self.draws
        expect = self.mab.predict_expectations(np.repeat(x, m, axis=0))
        expect = [expect] if isinstance(expect, dict) else expect
        if m == 1:  # LinUCB: the highest upper bound, ties split
            return [
                greedy({o: float(e[o]) for o in v.allowed})
                for e, v in zip(expect, visits, strict=True)
            ]
        col = {o: j for j, o in enumerate(self.offers)}
        samples = np.array([[e[o] for o in self.offers] for e in expect]).reshape(
            len(visits), m, -1
        )
        mask = np.zeros((len(visits), len(self.offers)), dtype=bool)
        for i, v in enumerate(visits):
            mask[i, [col[o] for o in v.allowed]] = True
        wins = np.where(mask[:, None, :], samples, -np.inf).argmax(axis=2)  # visits x draws
        counts = np.zeros_like(mask, dtype=float)
        np.add.at(counts, (np.repeat(np.arange(len(visits)), m), wins.ravel()), 1.0 / m)
        return [{o: float(counts[i, col[o]]) for o in v.allowed} for i, v in enumerate(visits)]

    def learn(
        self,
        visits: Sequence[LeagueVisit],
        shown: Sequence[str],
        probabilities: Sequence[float],
        rewards: Sequence[float],
    ) -> None:
        if not visits:
            return
        x = self.encoder.transform(visits)
        y = np.asarray(rewards, dtype=float) / self.scale
        if self.fitted:
            self.mab.partial_fit(list(shown), y, x)
        else:
            self.mab.fit(list(shown), y, x)
            self.fitted = True


# VW's explorers, each on the served bandit's own formatter, interactions and learning rate,
# so only the exploration differs. RegCB: VW 9.11's ``--regcbopt`` returns 1.0 for several
# offers (not a distribution), so the elimination variant ``--regcb`` is the one measured.
VW_EXPLORERS = {
    "vw_epsilon": "--epsilon 0.05",
    "vw_bag": "--bag 5",
    "vw_cover": "--cover 5",
    "vw_regcb": "--regcb",
    "vw_squarecb": "--squarecb --gamma_scale 30",  # the served bandit's, outside the pipeline
}


class VWPeer(Peer):
    """VW ``cb_explore_adf`` with one of :data:`VW_EXPLORERS`, learning online."""

    def __init__(
        self,
        name: str,
        actions: Mapping[str, Mapping[str, Any]],
        scale: float,
        seed: int,
    ) -> None:
        import vowpalwabbit

        self.name = name
        self.scale = scale
        self.lines = {k: action_line(k, v) for k, v in actions.items()}
        self.margins = {k: margin(v) for k, v in actions.items()}
        args = f"--cb_explore_adf {VW_EXPLORERS[name]} {LEARNER} --quiet"
        self.vw = vowpalwabbit.Workspace(f"{args} --random_seed {seed}")

    def _example(self, v: LeagueVisit, label: tuple[int, float, float] | None = None) -> list[str]:
        actions = [(o, self.lines[o]) for o in v.allowed]
        scores = {o: s / self.scale for o, s in v.values.items()}
        # the served bandit's priors (``BanditPolicy._priors``): the same information
        priors = {o: p * self.margins.get(o, 0.0) / self.scale for o, p in v.p_treated.items()}
        return format_example(v.features, v.channel, v.context, actions, label, scores, priors)

    def distributions(self, visits: Sequence[LeagueVisit]) -> list[dict[str, float]]:
        out = []
        for v in visits:
            p = np.clip(np.asarray(self.vw.predict(self._example(v)), dtype=float), 0.0, None)
            p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
            out.append(dict(zip(v.allowed, p.tolist(), strict=True)))
        return out

    def learn(
        self,
        visits: Sequence[LeagueVisit],
        shown: Sequence[str],
        probabilities: Sequence[float],
        rewards: Sequence[float],
    ) -> None:
        for v, o, p, r in zip(visits, shown, probabilities, rewards, strict=True):
            self.vw.learn(self._example(v, (v.allowed.index(o), -r / self.scale, p)))

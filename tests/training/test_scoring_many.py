"""ModelBundle's batch scores are byte-equal to its single-row ones (S- and T-learners)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.serving.test_decide_many import OFFERS, bundle
from training.scoring import ModelBundle, Scorer


def visits() -> list[tuple[dict, str, list[str]]]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(40):
        features = {"tenure_days": float(rng.uniform(0, 900)), "arpu": float(rng.uniform(5, 60)),
                    "plan": ["prepaid", "postpaid_m", "unknown_plan"][i % 3]}  # fmt: skip
        if i % 7 == 0:
            features.pop("arpu")  # missing: NaN, as in one row
        offers = [o for o in OFFERS if rng.random() < 0.6] + (["brand_new_offer"] if i == 3 else [])
        out.append((features, ["web", "email", "sms", "nowhere"][i % 4], offers))
    out[5] = (out[5][0], "web", [])  # no allowed offer
    return out


def t_learner(models: ModelBundle) -> ModelBundle:
    """The same propensity booster twice, as a T-learner's arms."""
    p = models.propensity
    assert p is not None
    spec = p.spec.model_copy(update={"learner": "t"})  # "treated" stays 0 in both arms
    return ModelBundle(models.churn, Scorer(spec, [p.boosters[0], p.boosters[0]]), models.versions)


@pytest.mark.parametrize("learner", ["s", "t"])
def test_batch_scores_equal_single_rows(learner: str) -> None:
    models = bundle() if learner == "s" else t_learner(bundle())
    rows = visits()
    feats = [f for f, _, _ in rows]
    risks = models.churn_risks(feats)
    assert risks.tobytes() == np.array([models.churn_risk(f) for f in feats]).tobytes()
    many = models.offer_scores_many(feats, [c for _, c, _ in rows], [o for _, _, o in rows])
    for (f, channel, offers), (treated, untreated) in zip(rows, many, strict=True):
        one_t, one_u = models.offer_scores(f, channel, offers)
        assert treated.tobytes() == np.asarray(one_t).tobytes()
        assert untreated.tobytes() == np.asarray(one_u).tobytes()
    assert not math.isnan(float(risks.sum()))


def test_empty_batches_and_missing_models() -> None:
    models = bundle()
    assert len(models.churn_risks([])) == 0
    assert [len(t) for t, _ in models.offer_scores_many([{}, {}], ["web", "app"], [[], []])] == [
        0,
        0,
    ]
    bare = ModelBundle(None, None, {})
    with pytest.raises(LookupError, match="no churn champion"):
        bare.churn_risks([{}])
    with pytest.raises(LookupError, match="no propensity champion"):
        bare.offer_scores_many([{}], ["web"], [["data_addon"]])

"""OPE estimators: exact errors, a peer implementation on real logs, and simulated truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from estimation.ope import Z95, dm, dr, ips, snips, snips_advantage
from tests.conftest import shared_file

# Prior of the Bernoulli TS policy ZOZOTOWN ran when the Open Bandit Dataset was logged
# (campaign "all"; published data in obp's conf/prior_bts.yaml, Apache-2.0).
TS_ALPHA = [47, 8, 62, 142, 3, 14, 7, 857, 12, 15, 6, 100, 48, 23, 71, 61, 13, 16, 518, 30, 7, 4,
            23, 8, 10, 11, 11, 18, 121, 11, 11, 10, 14, 9, 204, 58, 3, 19, 42, 1013, 2, 328, 15,
            31, 14, 138, 45, 55, 23, 38, 10, 401, 52, 6, 3, 6, 5, 32, 35, 133, 52, 820, 43, 195,
            8, 42, 40, 4, 32, 30, 9, 22, 6, 23, 5, 54, 8, 22, 65, 246]  # fmt: skip
TS_BETA = [12198, 3566, 15993, 35522, 2367, 4609, 3171, 181745, 4372, 4951, 3100, 24665, 13210,
           7061, 18061, 17449, 5644, 6787, 111326, 8776, 3334, 2271, 7389, 2659, 3665, 4724,
           3561, 5085, 27407, 4601, 4756, 4120, 4736, 3788, 45292, 14719, 2189, 5589, 11995,
           222255, 2308, 70034, 4801, 8274, 5421, 31912, 12213, 13576, 6230, 10382, 4141, 85731,
           12811, 2707, 2250, 2668, 2886, 9581, 9465, 28336, 12062, 162793, 12107, 41240, 3162,
           11604, 10818, 2923, 8897, 8654, 4000, 6580, 3174, 6766, 2602, 14506, 3968, 7523,
           16532, 51964]  # fmt: skip

GOOD = {"reward": [1.0, 0.0, 2.0], "pscore": [0.5, 0.25, 1.0], "target_prob": [1.0, 0.0, 0.5]}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"pscore": [0.5, 0.25]},
            r"shapes differ: reward \(3,\), pscore \(2,\), target_prob \(3,\)",
        ),
        ({"pscore": [0.5, 0.0, 1.0]}, r"pscore must be in \(0, 1\], got 0 at row 1"),
        ({"pscore": [0.5, 0.2, 1.5]}, r"pscore must be in \(0, 1\], got 1.5 at row 2"),
        ({"pscore": [-0.1, 0.2, 0.5]}, r"pscore must be in \(0, 1\], got -0.1 at row 0"),
        ({"target_prob": [1.0, 1.2, 0.0]}, r"target_prob must be in \[0, 1\], got 1.2 at row 1"),
        ({"reward": [1.0, np.nan, 0.0]}, r"reward contains NaN or infinity at row 1"),
        ({"pscore": [np.nan, 0.5, 0.5]}, r"pscore contains NaN or infinity at row 0"),
        ({"reward": [[1.0, 0.0, 2.0]]}, r"reward must be one-dimensional, got shape \(1, 3\)"),
        ({"reward": [], "pscore": [], "target_prob": []}, r"reward is empty"),
    ],
)
@pytest.mark.parametrize("estimator", [ips, snips])
def test_bad_inputs_name_the_field(estimator, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        estimator(**{**GOOD, **changes})


def test_dr_and_dm_validate_every_array() -> None:
    with pytest.raises(ValueError, match=r"shapes differ: .* q_hat_logged \(2,\), v_hat \(3,\)"):
        dr(**GOOD, q_hat_logged=[0.1, 0.2], v_hat=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"v_hat contains NaN or infinity at row 2"):
        dm([0.1, 0.2, np.inf])
    with pytest.raises(ValueError, match=r"target_prob is 0 on every logged row"):
        snips([1.0, 0.0], [0.5, 0.5], [0.0, 0.0])


def test_hand_computed_values() -> None:
    e = ips(**GOOD)  # weights 2, 0, 0.5 -> terms 2, 0, 1
    assert e.value == pytest.approx(1.0)
    assert e.ess == pytest.approx(2.5**2 / 4.25)
    assert snips(**GOOD).value == pytest.approx(3.0 / 2.5)
    assert dm([0.2, 0.4]).value == pytest.approx(0.3)
    d = dr(**GOOD, q_hat_logged=[1.0, 0.0, 2.0], v_hat=[0.3, 0.3, 0.3])
    assert d.value == pytest.approx(0.3)  # a perfect reward model leaves DM unchanged
    assert float(e) == e.value and e.ci_low < e.value < e.ci_high


def _obd() -> pd.DataFrame:
    d = pd.read_csv(
        shared_file("obd/random/all.csv.gz"),
        usecols=["item_id", "position", "click", "propensity_score"]
        + [f"user-item_affinity_{i}" for i in range(80)],
    )
    d["pos"] = d["position"] - 1  # positions are 1..3 in the file
    return d


def _peer(p_log: np.ndarray, r: np.ndarray, p_pred: np.ndarray) -> tuple[float, float, list]:
    from estimators.bandits import gaussian
    from estimators.bandits import ips as vw_ips
    from estimators.bandits import snips as vw_snips

    a, b, g = vw_ips.Estimator(), vw_snips.Estimator(), gaussian.Interval()
    for pl, rr, pp in zip(p_log.tolist(), r.tolist(), p_pred.tolist(), strict=True):
        a.add_example(pl, rr, pp)
        b.add_example(pl, rr, pp)
        g.add_example(pl, rr, pp)
    return a.get(), b.get(), g.get(0.05)


def _target_policies(d: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per-row probability that each policy puts the logged item at the logged position."""
    aff = d[[f"user-item_affinity_{i}" for i in range(80)]].to_numpy()
    item, pos = d["item_id"].to_numpy(), d["pos"].to_numpy()
    rows = np.arange(len(d))
    # deterministic: at each position the item clicked most there (hindsight; ties by item id)
    clicks = np.zeros((3, 80))
    np.add.at(clicks, (pos, item), d["click"].to_numpy())
    greedy = (clicks.argmax(axis=1)[pos] == item).astype(float)
    # stochastic: softmax over affinity, the same distribution at every position
    e = np.exp(20 * aff)
    soft = (e / e.sum(axis=1, keepdims=True))[rows, item]
    # ZOZOTOWN-prior Bernoulli TS, its per-position distribution by Monte Carlo (obp's recipe)
    draws = np.random.RandomState(12345).beta(TS_ALPHA, TS_BETA, size=(100_000, 80))
    ranked = np.argsort(draws, axis=1)[:, ::-1][:, :3]
    dist = np.stack([np.bincount(ranked[:, p], minlength=80) for p in range(3)], axis=1) / 1e5
    return {"greedy": greedy, "softmax": soft, "bts": dist[item, pos]}


def test_ips_snips_match_vw_estimators_on_open_bandit_data() -> None:
    d = _obd()
    r, p = d["click"].to_numpy(float), d["propensity_score"].to_numpy()
    for name, target in _target_policies(d).items():
        peer_ips, peer_snips, peer_ci = _peer(p, r, target)
        ours_ips, ours_snips = ips(r, p, target), snips(r, p, target)
        assert ours_ips.value == pytest.approx(peer_ips, rel=1e-12, abs=1e-15), name
        assert ours_snips.value == pytest.approx(peer_snips, rel=1e-12, abs=1e-15), name
        assert [ours_ips.ci_low, ours_ips.ci_high] == pytest.approx(peer_ci, rel=1e-9), name
        if name == "bts":  # the data README's reference figure, computed with obp
            assert round(ours_ips.value, 6) == 0.004553
    assert ips(r, p, np.ones_like(r) / 80).value == pytest.approx(r.mean())  # logging policy


def test_intervals_cover_the_simulated_truth() -> None:
    """A known world: 5 actions, logistic rewards; the target's true value is computed exactly."""
    rng = np.random.default_rng(3)
    k, n, reps = 5, 2000, 150
    coef = rng.normal(size=(k, 3))
    hits = {"ips": 0, "snips": 0, "dr": 0}
    errors = {"ips": [], "snips": [], "dr": [], "dm": []}
    for _ in range(reps):
        x = rng.normal(size=(n, 3))
        mu = 1 / (1 + np.exp(-(x @ coef.T)))  # (n, k) true click probabilities
        logp = np.full((n, k), 1 / k) * 0.5 + 0.5 * np.eye(k)[np.argmin(mu, axis=1)]
        a = np.array([rng.choice(k, p=row) for row in logp])
        r = rng.binomial(1, mu[np.arange(n), a]).astype(float)
        target = np.exp(3 * mu) / np.exp(3 * mu).sum(axis=1, keepdims=True)
        truth = float((target * mu).sum(axis=1).mean())
        q_hat = np.clip(mu + rng.normal(0, 0.1, size=mu.shape), 0, 1)  # an imperfect model
        rows = np.arange(n)
        args = (r, logp[rows, a], target[rows, a])
        estimates = {
            "ips": ips(*args),
            "snips": snips(*args),
            "dr": dr(*args, q_hat[rows, a], (target * q_hat).sum(axis=1)),
            "dm": dm((target * q_hat).sum(axis=1)),
        }
        for name, e in estimates.items():
            errors[name].append(e.value - truth)
            if name in hits:
                hits[name] += e.ci_low <= truth <= e.ci_high
    for name, h in hits.items():
        assert 0.88 <= h / reps <= 0.995, (name, h / reps)
        assert abs(np.mean(errors[name])) < 0.005, name  # unbiased (SNIPS: nearly)
    assert np.std(errors["dr"]) < np.std(errors["ips"])  # the model's correction pays


def test_snips_advantage_is_the_paired_difference_of_influences() -> None:
    """The advantage's value is the difference of the two SNIPS values; its interval comes
    from the per-row difference of their influences (computed here by hand), not from two
    separate intervals."""
    rng = np.random.default_rng(11)
    n = 500
    p = rng.uniform(0.1, 0.9, n)
    r = rng.binomial(1, 0.3, n) * 10.0
    a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    adv = snips_advantage(r, p, a, b)
    va, vb = snips(r, p, a), snips(r, p, b)
    assert adv.value == pytest.approx(va.value - vb.value, rel=1e-12)
    wa, wb = a / p, b / p
    ia = wa * (r - (wa * r).sum() / wa.sum()) / wa.mean()
    ib = wb * (r - (wb * r).sum() / wb.sum()) / wb.mean()
    half = Z95 * np.std(ia - ib, ddof=1) / np.sqrt(n)
    assert (adv.ci_low, adv.ci_high) == pytest.approx((adv.value - half, adv.value + half))
    assert adv.estimator == "snips_advantage" and adv.n == n
    # one policy against itself: no advantage and no uncertainty about it
    same = snips_advantage(r, p, a, a)
    assert same.value == pytest.approx(0.0, abs=1e-12) and same.ci_high - same.ci_low < 1e-9
    with pytest.raises(ValueError, match=r"baseline_prob must be in \[0, 1\], got 2 at row 0"):
        snips_advantage(r[:2], p[:2], a[:2], [2.0, 0.5])
    with pytest.raises(ValueError, match=r"baseline_prob is 0 on every logged row"):
        snips_advantage(r[:2], p[:2], a[:2], [0.0, 0.0])


def test_snips_advantage_interval_matches_a_bootstrap_and_covers_the_truth() -> None:
    """Simulated logs with a known true advantage of one softmax policy over another: the
    paired interval covers it about 95% of the time, its width agrees with a bootstrap of the
    rows, and it is narrower than what two separate intervals would suggest."""
    rng = np.random.default_rng(5)
    k, n, reps = 4, 1500, 120
    coef = rng.normal(size=(k, 3))
    hits, ratios, widths = 0, [], []
    for rep in range(reps):
        x = rng.normal(size=(n, 3))
        mu = 1 / (1 + np.exp(-(x @ coef.T)))
        a = rng.integers(0, k, n)  # uniform logging
        r = rng.binomial(1, mu[np.arange(n), a]).astype(float)
        pol_a = np.exp(4 * mu) / np.exp(4 * mu).sum(axis=1, keepdims=True)
        pol_b = np.exp(2 * mu) / np.exp(2 * mu).sum(axis=1, keepdims=True)
        truth = float(((pol_a - pol_b) * mu).sum(axis=1).mean())
        rows = np.arange(n)
        pscore, ta, tb = np.full(n, 1 / k), pol_a[rows, a], pol_b[rows, a]
        adv = snips_advantage(r, pscore, ta, tb)
        hits += adv.ci_low <= truth <= adv.ci_high
        sep = snips(r, pscore, ta), snips(r, pscore, tb)
        widths.append((adv.ci_high - adv.ci_low) / sum(e.ci_high - e.ci_low for e in sep))
        if rep < 5:  # the bootstrap's sd of the difference against the delta method's
            boots = []
            for _ in range(300):
                i = rng.integers(0, n, n)
                boots.append(
                    snips(r[i], pscore[i], ta[i]).value - snips(r[i], pscore[i], tb[i]).value
                )
            ratios.append(np.std(boots, ddof=1) / ((adv.ci_high - adv.ci_low) / (2 * Z95)))
    assert 0.88 <= hits / reps <= 0.99, hits / reps
    assert all(0.85 < q < 1.15 for q in ratios), ratios
    assert np.mean(widths) < 0.6, np.mean(widths)  # pairing removes the shared noise

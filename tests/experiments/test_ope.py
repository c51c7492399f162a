"""OPE of named policies on ledger logs: the policies, the halves best_single is chosen and
scored on, the CLI."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from estimation.ope import ips


def _uniform_logs(
    settings, n: int, seed: int = 0, converting: Callable[[int], str] = lambda i: "data_addon"
) -> None:
    """A uniform logging policy on the real catalogue; only the ``converting`` offer of each
    row (data_addon by default) ever converts."""
    import uuid
    from datetime import timedelta

    from nextbest.db import engine_for
    from record.ledger import Ledger
    from record.tables import DecisionRow, OutcomeRow, now

    rng = np.random.default_rng(seed)
    shown = ["device_upgrade", "data_addon", "streaming_bundle", "loyalty_reward"]
    probs = {**dict.fromkeys(shown, 0.25), "no_offer": 0.0}
    ledger, t0 = Ledger(engine_for(settings.ledger_db_url)), now()
    for i in range(n):
        offer, did = str(rng.choice(shown)), uuid.uuid4().hex
        row = DecisionRow(decision_id=did, ts=t0 + timedelta(seconds=i), customer_id=f"c{i}",
                          channel="app", context={}, experiment="nbo", arm="treatment",
                          offer_id=offer, propensity=0.25, probabilities=probs,
                          scores={"features": {"arpu": 20.0}})  # fmt: skip
        ledger.record_decision(row)
        if offer == converting(i) and rng.random() < 0.5:
            ledger.record_outcome(OutcomeRow(idempotency_key=did, decision_id=did,
                                             type="conversion", value=40.0, ts=t0))  # fmt: skip


def test_named_policies_on_ledger_logs(tmp_path) -> None:
    from experiments.ope import evaluate_policy
    from nextbest.settings import Settings
    from training.bandit_ledger import ledger_examples

    settings = Settings(home=tmp_path)
    with pytest.raises(ValueError, match="ledger: no learnable decisions"):
        evaluate_policy(settings, "uniform")
    _uniform_logs(settings, 200)
    ex = ledger_examples(settings)
    r = ex["reward"].to_numpy()
    uniform = evaluate_policy(settings, "uniform")
    # uniform over the 5 allowed offers, 1 of which the logging policy never showed
    assert uniform["ips"]["value"] == pytest.approx(0.8 * r.mean())
    assert uniform["logging"]["value"] == pytest.approx(r.mean())
    assert uniform["ess"] == pytest.approx(200) and uniform["unsupported_mass"] == 0.2
    assert uniform["warnings"] == [
        "thin support: 20.0% of the policy's probability is on offers the logging policy "
        "never showed in that context"
    ]
    single = evaluate_policy(settings, "offer:data_addon")
    assert single["ips"]["value"] == pytest.approx(4 * r.mean())  # only data_addon converts
    assert single["dr"]["value"] == pytest.approx(single["snips"]["value"])
    assert single["ess"] < 100 and single["warnings"][0].startswith("thin support: effective")
    assert evaluate_policy(settings, "best_single")["version"] == "offer:data_addon"
    never = evaluate_policy(settings, "offer:no_offer")
    assert never["unsupported_mass"] == 1.0 and "never showed" in never["warnings"][-1]
    with pytest.raises(ValueError, match=r"policy: 'bogus' is not one of champion, challenger"):
        evaluate_policy(settings, "bogus")


def test_best_single_is_chosen_on_one_half_and_scored_on_the_other(tmp_path) -> None:
    """data_addon converts in the older half, streaming_bundle in the newer: chosen on the
    older half, data_addon is scored on the newer half alone, where it earns nothing (chosen
    and scored on all the logs, it looked like the best offer at its best)."""
    from experiments.ope import evaluate_policy
    from nextbest.settings import Settings
    from training.bandit_ledger import ledger_examples

    settings = Settings(home=tmp_path)
    _uniform_logs(
        settings, 200, converting=lambda i: "data_addon" if i < 100 else "streaming_bundle"
    )
    ex = ledger_examples(settings)
    single = evaluate_policy(settings, "best_single")
    assert single["version"] == "offer:data_addon"
    assert (single["chosen_on"], single["n"]) == (100, 100)  # disjoint halves
    newer = ex.sort_values("ts").iloc[100:]
    target = (newer["offer_id"] == "data_addon").to_numpy(float)
    r, p = newer["reward"].to_numpy(), newer["propensity"].to_numpy()
    assert single["ips"]["value"] == pytest.approx(ips(r, p, target).value) == 0.0
    assert evaluate_policy(settings, "uniform")["chosen_on"] == 0


def test_ope_cli(private_home) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from nextbest.cli import app
    from nextbest.settings import get_settings

    _uniform_logs(get_settings(), 150, seed=1)  # in the test's own home, where the CLI reads
    ok = CliRunner().invoke(app, ["ope", "--policy", "uniform", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["n"] == 150
    bad = CliRunner().invoke(app, ["ope", "--policy", "bogus"])
    assert bad.exit_code == 2 and "error: policy: 'bogus' is not one of" in bad.output

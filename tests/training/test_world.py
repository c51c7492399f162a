"""On a simulated world: point-in-time correctness, labels, and train/serve consistency from
the online store through the BentoML-stored champion."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from training.datasets import CHURN_HORIZON, churn_frames, propensity_frames
from training.registry import client_for, load_version
from training.scoring import load_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def churn(trained_world):  # noqa: ANN001, ANN201
    return churn_frames(trained_world.settings)


def _log(trained_world) -> pd.DataFrame:  # noqa: ANN001
    return pd.read_parquet(trained_world.settings.event_log_dir / "batch.parquet")


def test_no_churn_feature_sees_the_future(trained_world, churn) -> None:  # noqa: ANN001
    """Recount windowed features from the raw event log using only events before T; adding the
    30 days after T (the label window) would change them, so the check has power."""
    log = _log(trained_world)
    rows = pd.concat([churn.train, churn.valid]).sample(300, random_state=0)
    purchases = log.loc[log["event_type"] == "purchase", ["customer_id", "ts"]]
    merged = rows[["customer_id", "event_timestamp", "purchases_30d"]].merge(
        purchases, on="customer_id", how="left"
    )
    t, ts = merged["event_timestamp"], merged["ts"]
    before = merged.assign(hit=(ts < t) & (ts >= t - pd.Timedelta(days=30)))
    leaky = merged.assign(hit=(ts < t + CHURN_HORIZON) & (ts >= t - pd.Timedelta(days=30)))
    keys = ["customer_id", "event_timestamp"]
    honest = before.groupby(keys)["hit"].sum()
    future = leaky.groupby(keys)["hit"].sum()
    feature = rows.set_index(keys)["purchases_30d"].astype(int)
    assert (feature == honest.reindex(feature.index)).all()
    assert (feature != future.reindex(feature.index)).any()


def test_churn_labels_and_time_split(trained_world, churn) -> None:  # noqa: ANN001
    log = _log(trained_world)
    first_churn = log.loc[log["event_type"] == "churn"].groupby("customer_id")["ts"].min()
    for frame in (churn.train, churn.valid):
        at = frame["customer_id"].map(first_churn)
        assert not (at < frame["event_timestamp"]).any()  # nobody already gone
        expected = (at < frame["event_timestamp"] + CHURN_HORIZON).astype(int)
        assert (frame["label"].to_numpy() == expected.to_numpy()).all()
    # the training labels' windows close before validation starts
    assert (
        churn.train["event_timestamp"].max() + CHURN_HORIZON <= churn.valid["event_timestamp"].min()
    )
    assert churn.feature_service == "churn_v1" and "plan" in churn.features


def test_exposure_features_are_as_of_the_exposure(trained_world) -> None:  # noqa: ANN001
    """Feast's as-of join takes the latest snapshot at or before each exposure, never later."""
    frames = propensity_frames(trained_world.settings)
    rows = pd.concat([frames.train, frames.valid])
    snaps = pd.read_parquet(trained_world.build["feature_file"])
    snaps = snaps[["customer_id", "event_timestamp", "tenure_days", "purchases_90d"]]
    asof = pd.merge_asof(
        rows.sort_values("event_timestamp")[["customer_id", "event_timestamp"]],
        snaps.sort_values("event_timestamp").rename(columns={"event_timestamp": "snap_ts"}),
        left_on="event_timestamp",
        right_on="snap_ts",
        by="customer_id",
        direction="backward",
    )
    got = rows.set_index(["customer_id", "event_timestamp"])["purchases_90d"]
    want = asof.set_index(["customer_id", "event_timestamp"])["purchases_90d"]
    pd.testing.assert_series_equal(got.sort_index().astype(float), want.sort_index().astype(float))
    assert set(rows["treated"]) == {0, 1}
    assert "true_p_treated" not in frames.features and "basket_abandoned" in frames.features
    assert (rows["basket_minutes_since_change"].dropna() >= -1).all()


def test_train_serve_consistency(trained_world) -> None:  # noqa: ANN001
    """A known customer: online features -> BentoML champion == offline features -> the
    training run's model (MLflow alias), to the last bit of a double."""
    from features.store import historical_features, read_online

    settings, store = trained_world.settings, trained_world.store
    assert trained_world.churn["promotion"]["promoted"]
    bundle = load_bundle(settings)
    assert bundle is not None
    assert bundle.versions == {
        "churn": trained_world.churn["version"],
        "propensity": trained_world.propensity["version"],
    }
    snaps = pd.read_parquet(trained_world.build["feature_file"])
    last = snaps["event_timestamp"].max()
    customers = sorted(snaps.loc[snaps["event_timestamp"] == last, "customer_id"])[:3]
    online = read_online(store, "churn_v1", customers)
    entity = pd.DataFrame(
        {"customer_id": customers, "event_timestamp": last + pd.Timedelta(seconds=1)}
    )
    offline = historical_features(store, "churn_v1", entity).set_index("customer_id").loc[customers]
    client_for(settings)  # tracking and registry URIs: a loaded alias reads this store
    by_alias = mlflow.pyfunc.load_model("models:/churn@champion")
    trained = load_version(settings, "churn", trained_world.churn["version"])
    at_training = trained.predict_frame(offline.reset_index())["churn_risk"].to_numpy()
    np.testing.assert_array_equal(
        by_alias.predict(offline.reset_index())["churn_risk"].to_numpy(), at_training
    )
    served = np.array([bundle.churn_risk(row) for row in online])
    np.testing.assert_allclose(served, at_training, rtol=0, atol=1e-12)
    p_t, p_u = bundle.offer_scores(online[0], "email", ["data_addon", "family_plan"])
    assert p_t.shape == (2,) and np.all((p_t > 0) & (p_t < 1) & (p_u > 0) & (p_u < 1))


def test_training_reports_and_gate(trained_world) -> None:  # noqa: ANN001
    churn, prop = trained_world.churn, trained_world.propensity
    assert {"auc", "pr_auc", "brier", "top_decile_lift"} <= set(churn["metrics"])
    assert {"qini", "auuc", "true_uplift_pearson", "t_learner_qini", "staged_learner_qini"} <= set(
        prop["metrics"]
    )
    client = mlflow.MlflowClient(trained_world.settings.tracking_uri)
    run = client.get_run(churn["run_id"])
    assert run.data.tags["feature_service"] == "churn_v1"
    assert run.data.tags["valid_window"] == churn["valid_window"]
    artifacts = {a.path for a in client.list_artifacts(churn["run_id"], "plots")}
    assert artifacts == {"plots/calibration.png", "plots/gains.png", "plots/feature_importance.png"}


def test_plan_and_arpu_are_as_of_each_frame_and_the_latest_online(trained_world) -> None:  # noqa: ANN001
    """Item 13: customers who changed plan or ARPU inside the history. Feast's point-in-time
    frame at each snapshot T shows the plan and ARPU the CRM held just before T (never today's
    extract), and the online store, materialised from the snapshots, shows the latest."""
    from features.identity import graph_for
    from features.store import read_online
    from training.datasets import point_in_time

    world, settings = trained_world.world, trained_world.settings
    plans = pd.read_parquet(world / "plans.parquet")
    today = pd.read_parquet(world / "people.parquet", columns=["person_id", "plan", "arpu"])
    crm = pd.read_parquet(world / "identities.parquet").query("source == 'crm'")
    crm = crm.assign(customer_id=graph_for(settings).map_identifiers(crm).to_numpy())
    owners = crm.dropna(subset=["customer_id"]).drop_duplicates(["true_person_id", "customer_id"])
    alone = owners.groupby("customer_id")["true_person_id"].transform("size") == 1
    account = owners.loc[alone].set_index("true_person_id")["customer_id"]
    changed = plans["person_id"].duplicated() & plans["person_id"].isin(account.index)
    movers = plans.loc[plans["person_id"].isin(plans.loc[changed, "person_id"])]
    times = pd.to_datetime(trained_world.build["snapshots"], utc=True).astype("datetime64[us, UTC]")
    rows = pd.merge_asof(
        pd.DataFrame({"event_timestamp": times}).merge(
            movers[["person_id"]].drop_duplicates(), how="cross"
        ),
        movers.rename(columns={"valid_from": "since"}).sort_values("since"),
        left_on="event_timestamp",
        right_on="since",
        by="person_id",
        allow_exact_matches=False,  # a change at exactly T is T's future
    ).dropna(subset=["plan"])
    rows["customer_id"] = rows["person_id"].map(account)
    latest = rows["person_id"].map(today.set_index("person_id")["arpu"])
    assert (rows["arpu"] != latest).sum() >= 10, "some snapshots predate a change: the check bites"
    frame = point_in_time(settings, "churn_v1", rows[["customer_id", "event_timestamp"]])
    assert frame["plan"].tolist() == rows["plan"].tolist()
    np.testing.assert_allclose(frame["arpu"].to_numpy(), rows["arpu"].to_numpy())

    ids = account.loc[movers["person_id"].unique()]
    online = read_online(trained_world.store, "churn_v1", ids.tolist())
    want = today.set_index("person_id").loc[ids.index]
    assert [r["plan"] for r in online] == want["plan"].tolist()
    np.testing.assert_allclose([r["arpu"] for r in online], want["arpu"].to_numpy())

"""Point-in-time training frames: Feast FeatureService features as of each row's time, labels
from what happened after it.

- churn: one row per (customer alive at snapshot T); label = a churn event in [T, T + 30 days).
- propensity: one row per past campaign exposure (treatment and holdout alike), mapped to a
  customer through the identity graph; features as of the exposure time; label = converted
  within the attribution window.
Rows whose label window is not fully observed are dropped (a censored label is not a 0).
Feature names come from the FeatureService, never from a list kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nextbest.settings import Settings

CHURN_SERVICE, OFFER_SERVICE = "churn_v1", "offer_v1"
CHURN_HORIZON = pd.Timedelta(days=30)
KEYS = ("customer_id", "event_timestamp")


class DatasetError(ValueError):
    """The world or feature store cannot give a training frame (and the reason)."""


@dataclass
class Frames:
    """A time split: train rows end (label windows included) before validation rows start."""

    train: pd.DataFrame
    valid: pd.DataFrame
    features: list[str]
    feature_service: str
    window: dict[str, str]


def _event_log(settings: Settings) -> pd.DataFrame:
    path = settings.event_log_dir / "batch.parquet"
    if not path.exists():
        raise DatasetError(f"events: {path} is missing (run `nextbest features build` first)")
    return pd.read_parquet(path, columns=["customer_id", "ts", "event_type"])


def _snapshots(settings: Settings) -> pd.DataFrame:
    from features.repo.data_sources import SNAPSHOT_PATH

    path = settings.feature_dir / SNAPSHOT_PATH
    if not path.exists():
        raise DatasetError(f"features: {path} is missing (run `nextbest features build` first)")
    return pd.read_parquet(path, columns=list(KEYS))


def point_in_time(settings: Settings, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Features of ``service`` as of each row's ``event_timestamp`` (Feast's as-of join)."""
    from features.store import get_store, historical_features

    entities = entity_df.reset_index(drop=True).copy()
    entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True).astype(
        "datetime64[us, UTC]"
    )
    entities["_row"] = range(len(entities))
    out = historical_features(get_store(settings), service, entities)
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def feature_columns(frame: pd.DataFrame, entity_columns: list[str]) -> list[str]:
    """What Feast added to the entity frame: the service's features, minus absolute
    timestamps (they never recur in the future; the service's on-demand view turns them into
    durations such as ``basket_minutes_since_change``, which are kept)."""
    return [
        c
        for c in frame.columns
        if c not in entity_columns and not pd.api.types.is_datetime64_any_dtype(frame[c])
    ]


def churn_entities(settings: Settings) -> pd.DataFrame:
    """(customer_id, T, label) for customers not yet churned at T, with T + 30 days observed."""
    events = _event_log(settings)
    end = pd.Timestamp(events["ts"].max())
    churned = events.loc[events["event_type"] == "churn"].groupby("customer_id")["ts"].min()
    snaps = _snapshots(settings).drop_duplicates()
    snaps = snaps.loc[snaps["event_timestamp"] + CHURN_HORIZON <= end]
    churn_at = snaps["customer_id"].map(churned)
    alive = churn_at.isna() | (churn_at >= snaps["event_timestamp"])
    rows = snaps.loc[alive].copy()
    at = churn_at.loc[alive]
    rows["label"] = (at < rows["event_timestamp"] + CHURN_HORIZON).fillna(False).astype(int)
    return rows.reset_index(drop=True)


def churn_frames(settings: Settings, valid_snapshots: int = 1) -> Frames:
    """Train on snapshots whose 30-day label window closes before the validation snapshots."""
    entities = churn_entities(settings)
    times = sorted(entities["event_timestamp"].unique())
    if len(times) < valid_snapshots + 1:
        raise DatasetError("churn: need at least 2 labelled snapshots (a longer world)")
    valid_start = pd.Timestamp(times[-valid_snapshots])
    train_mask = entities["event_timestamp"] + CHURN_HORIZON <= valid_start
    if not train_mask.any():
        raise DatasetError(
            f"churn: no snapshot ends its 30-day label window before {valid_start:%Y-%m-%d}; "
            "simulate more days"
        )
    valid_mask = entities["event_timestamp"] >= valid_start
    frame = point_in_time(settings, CHURN_SERVICE, entities)
    features = feature_columns(frame, [*KEYS, "label"])
    train, valid = frame.loc[train_mask.to_numpy()], frame.loc[valid_mask.to_numpy()]
    return Frames(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        features=features,
        feature_service=CHURN_SERVICE,
        window=_window(train, valid),
    )


def _window(train: pd.DataFrame, valid: pd.DataFrame) -> dict[str, str]:
    def span(f: pd.DataFrame) -> str:
        return f"{f['event_timestamp'].min():%Y-%m-%d}..{f['event_timestamp'].max():%Y-%m-%d}"

    return {"train_window": span(train), "valid_window": span(valid)}


def exposure_entities(settings: Settings, world_dir: Path | None = None) -> pd.DataFrame:
    """Exposures mapped to customers: treated flag, label within the attribution window, truth.

    ``true_*`` columns ride along for evaluation only; they are never model columns."""
    from features.identity import graph_for

    path = Path(world_dir or settings.world_dir) / "exposures.parquet"
    if not path.exists():
        raise DatasetError(f"exposures: {path} is missing (run `nextbest simulate` first)")
    exp = pd.read_parquet(path)
    exp["customer_id"] = graph_for(settings).map_identifiers(exp).to_numpy()
    exp = exp.loc[exp["customer_id"].notna()].copy()
    window = pd.Timedelta(days=settings.attribution_days)
    end = pd.Timestamp(_event_log(settings)["ts"].max())
    exp = exp.loc[exp["ts"] + window <= end]
    converted = exp["converted"].astype(bool) & (exp["converted_at"] - exp["ts"] <= window)
    return pd.DataFrame(
        {
            "customer_id": exp["customer_id"],
            "event_timestamp": exp["ts"],
            "offer_id": exp["offer_id"],
            "channel": exp["channel"],
            "treated": (exp["arm"] == "treatment").astype(int),
            "label": converted.fillna(False).astype(int),
            "true_p_treated": exp["true_p_treated"],
            "true_p_untreated": exp["true_p_untreated"],
        }
    ).reset_index(drop=True)


def propensity_frames(
    settings: Settings, world_dir: Path | None = None, valid_share: float = 0.25
) -> Frames:
    """Validate on the latest exposures; train on those whose window closed before them."""
    entities = exposure_entities(settings, world_dir)
    if entities.empty or entities["treated"].nunique() < 2:
        raise DatasetError("exposures: need treatment and holdout rows with observed outcomes")
    valid_start = entities["event_timestamp"].quantile(1 - valid_share)
    window = pd.Timedelta(days=settings.attribution_days)
    train_mask = entities["event_timestamp"] + window <= valid_start
    if train_mask.sum() < 100:
        train_mask = entities["event_timestamp"] < valid_start  # short worlds: no gap
    valid_mask = entities["event_timestamp"] >= valid_start
    frame = point_in_time(settings, OFFER_SERVICE, entities)
    features = feature_columns(frame, [*KEYS, *entities.columns])
    train, valid = frame.loc[train_mask.to_numpy()], frame.loc[valid_mask.to_numpy()]
    return Frames(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        features=features,
        feature_service=OFFER_SERVICE,
        window=_window(train, valid),
    )

"""The real Feast store: apply/materialise/online read against the batch computation,
push-then-read through the real-time path, point-in-time training frames, and Redis."""

from __future__ import annotations

import math
import warnings
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.store import historical_features, read_online

pytestmark = pytest.mark.slow


def _same(a: object, b: object) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or pd.isna(b)
    if isinstance(a, float):
        return a == pytest.approx(float(b))
    if isinstance(a, datetime):  # Feast keeps UnixTimestamp features to the second
        return pd.Timestamp(a) == pd.Timestamp(b).floor("s")
    return a == b


def _final_rows(home) -> pd.DataFrame:  # noqa: ANN001
    """The last snapshot of customers no live event has touched (other tests push some)."""
    from features.ingest import read_event_log

    batch, real = home.batch(), home.realtime()
    last = batch["event_timestamp"].max()
    keys = ["customer_id", "event_timestamp"]
    both = batch[batch["event_timestamp"] == last].merge(real, on=keys)
    log = read_event_log(home.settings)
    touched = set(log.loc[log["ts"] >= last, "customer_id"])
    return both[~both["customer_id"].isin(touched)].set_index("customer_id")


def test_online_read_matches_the_batch_snapshot(feature_home) -> None:  # noqa: ANN001
    expected = _final_rows(feature_home)
    ids = list(expected.index[:60])
    now = pd.Timestamp(feature_home.build["snapshots"][-1]).to_pydatetime()
    rows = read_online(feature_home.store, "profile_v1", ids, now=now)
    compared = 0
    for row in rows:
        want = expected.loc[row["customer_id"]]
        for name, value in row.items():
            if name in want.index:
                assert _same(value, want[name]), (row["customer_id"], name, value, want[name])
                compared += 1
        changed = want["basket_updated_at"]
        if pd.isna(changed):
            assert row["basket_minutes_since_change"] is None
        else:
            minutes = (pd.Timestamp(now) - changed.floor("s")).total_seconds() / 60
            assert row["basket_minutes_since_change"] == pytest.approx(minutes)
            assert row["basket_abandoned"] == (want["basket_items"] > 0 and minutes >= 60)
    assert compared >= 60 * 30


def test_services_share_one_definition(feature_home) -> None:  # noqa: ANN001
    store = feature_home.store
    cid = _final_rows(feature_home).index[0]
    churn = read_online(store, "churn_v1", [cid])[0]
    offer = read_online(store, "offer_v1", [cid])[0]
    profile = read_online(store, "profile_v1", [cid])[0]
    assert set(churn) < set(offer) < set(profile) | {"customer_id"}
    assert all(offer[k] == profile[k] for k in churn if k != "customer_id")
    with pytest.raises(Exception, match="nope_v9"):
        read_online(store, "nope_v9", [cid])


def test_unknown_customer_reads_as_empty(feature_home) -> None:  # noqa: ANN001
    row = read_online(feature_home.store, "churn_v1", ["no-such-customer"])[0]
    assert row["customer_id"] == "no-such-customer"
    assert all(v is None for k, v in row.items() if k != "customer_id")


def test_training_frame_is_the_snapshot_as_of_each_row(feature_home) -> None:  # noqa: ANN001
    batch = feature_home.batch()
    times = sorted(batch["event_timestamp"].unique())
    sample = batch[batch["event_timestamp"].isin(times[1:3])].head(40)
    # ask an hour after each snapshot: the PIT join must pick that snapshot, not the next
    entity = sample[["customer_id", "event_timestamp"]].copy()
    entity["event_timestamp"] = entity["event_timestamp"] + pd.Timedelta(hours=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = historical_features(feature_home.store, "churn_v1", entity)
    assert len(got) == len(entity)
    want = sample.assign(event_timestamp=sample["event_timestamp"] + pd.Timedelta(hours=1))
    both = got.merge(want, on=["customer_id", "event_timestamp"], suffixes=("", "_want"))
    assert len(both) == len(sample)
    for name in ("purchases_30d", "spend_90d", "tenure_days", "plan", "complaints_90d", "arpu"):
        for a, b in zip(both[name], both[f"{name}_want"], strict=True):
            assert _same(a, b), name


def _known_email(home) -> tuple[str, str]:  # noqa: ANN001
    """An e-mail from the world's CRM records and the customer it resolves to."""
    from features.identity import Identifiers, graph_for

    ids = pd.read_parquet(home.world / "identities.parquet")
    graph = graph_for(home.settings)
    for email in ids.loc[ids["source"] == "crm", "email"].dropna():
        cid = graph.lookup(Identifiers(email=email))
        if cid:
            return email, cid
    raise AssertionError("no CRM e-mail resolves")


def test_push_then_read_sees_the_basket(feature_home) -> None:  # noqa: ANN001
    from features.identity import graph_for
    from features.ingest import ingest_event, read_event_log

    home = feature_home
    email, cid = _known_email(home)
    graph = graph_for(home.settings)
    before = read_online(home.store, "offer_v1", [cid])[0]
    now = datetime.now(UTC)
    add = {
        "ts": now.isoformat(),
        "channel": "web",
        "event_type": "basket_add",
        "email": email,
        "event_id": "test-add-1",
        "product_id": "acc_case",
        "value": 19.99,
        "quantity": 2,
    }
    out = ingest_event(add, store=home.store, graph=graph, settings=home.settings)
    assert out["customer_id"] == cid and out["pushed"]
    retry = ingest_event(add, store=home.store, graph=graph, settings=home.settings)
    assert not retry["pushed"]  # the same event_id again: logged and counted once
    after = read_online(home.store, "offer_v1", [cid], now=now + timedelta(minutes=90))[0]
    assert after["basket_items"] == (before["basket_items"] or 0) + 2
    assert after["basket_value"] == pytest.approx((before["basket_value"] or 0) + 19.99)
    assert after["basket_minutes_since_change"] == pytest.approx(90.0)
    assert after["basket_abandoned"] is True
    assert after["purchases_30d"] == before["purchases_30d"]  # batch fields untouched

    buy = {
        **add,
        "event_id": "test-buy-1",
        "event_type": "purchase",
        "ts": (now + timedelta(minutes=1)).isoformat(),
    }
    ingest_event(buy, store=home.store, graph=graph, settings=home.settings)
    cleared = read_online(home.store, "offer_v1", [cid])[0]
    assert (cleared["basket_items"], cleared["basket_value"]) == (0, 0.0)
    assert cleared["basket_abandoned"] is False

    log = read_event_log(home.settings)
    assert {out["event_id"]} <= set(log["event_id"])
    assert log.iloc[-1]["customer_id"] == cid
    assert "email" not in log.columns  # raw identifiers never reach the log


def test_unified_profile(feature_home) -> None:  # noqa: ANN001
    from features.store import unified_profile

    _, cid = _known_email(feature_home)
    prof = unified_profile(feature_home.settings, cid, store=feature_home.store)
    assert prof["customer_id"] == cid
    assert prof["identifiers_total"] >= 1 and "email" in prof["identifiers"]
    assert set(prof["basket"]) >= {"basket_items", "basket_abandoned"}
    assert prof["features"]["plan"] in {"prepaid", "postpaid_s", "postpaid_m", "postpaid_l"}
    with pytest.raises(LookupError, match="'nobody' is not known"):
        unified_profile(feature_home.settings, "nobody", store=feature_home.store)


REDIS_TEST_DB = 13


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def test_redis_online_store(feature_home, tmp_path) -> None:  # noqa: ANN001
    from features.ingest import push_realtime

    _, store = _redis_home(feature_home, tmp_path, "scale-out online store test")
    assert store.config.online_store.type == "redis"
    expected = _final_rows(feature_home)
    ids = list(expected.index[:20])
    for row in read_online(store, "churn_v1", ids):
        want = expected.loc[row["customer_id"]]
        for name in ("purchases_90d", "arpu", "plan", "usage_trend"):
            assert _same(row[name], want[name]), name
    cid = ids[0]
    state = {
        "basket_items": 5,
        "basket_value": 50.0,
        "basket_updated_at": datetime.now(UTC),
        "last_visit_at": None,
        "last_channel": "app",
    }
    push_realtime(store, cid, state, datetime.now(UTC))
    seen = read_online(store, "offer_v1", [cid])[0]
    assert (seen["basket_items"], seen["basket_value"], seen["last_channel"]) == (5, 50.0, "app")


def _fresh_home(home, tmp_path, **update):  # noqa: ANN001, ANN202
    """A store of its own over a copy of the session's snapshots and batch event log, applied
    and materialised (erasure tests must not delete rows other tests read)."""
    import shutil

    from features.store import apply_repo, get_store, materialize

    settings = home.settings.model_copy(update={"home": tmp_path, **update})
    shutil.copytree(home.settings.feature_dir / "snapshots", settings.feature_dir / "snapshots")
    settings.event_log_dir.mkdir(parents=True)
    shutil.copy(home.settings.event_log_dir / "batch.parquet", settings.event_log_dir)
    store = get_store(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_repo(store)
        end = pd.Timestamp(home.build["snapshots"][-1]).to_pydatetime()
        materialize(store, end=end + timedelta(seconds=1))
    return settings, store


def _redis_home(home, tmp_path, why: str):  # noqa: ANN001, ANN202
    """:func:`_fresh_home` on Redis, in a database of its own emptied first (Feast's Redis
    store ignores a write that is not newer than the stored row, so rows left by an earlier
    run would win); a skip saying ``why`` when Redis does not answer."""
    if not _redis_up():
        pytest.skip(f"Redis is not answering on 127.0.0.1:6379 ({why})")
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB).flushdb()
    # generous timeouts of its own: these tests check what is stored, not how fast (the
    # product's 100 ms read deadline has tests of its own, tests/features/test_redis_faults.py)
    redis_url = f"127.0.0.1:6379,db={REDIS_TEST_DB},socket_timeout=5,socket_connect_timeout=5"
    return _fresh_home(home, tmp_path, online_store="redis", redis_url=redis_url)


def _rows_of(settings, customer_id: str) -> dict[str, int]:  # noqa: ANN001
    """Rows naming the customer in every Parquet file of the feature folder, and in the log."""
    from features.ingest import read_event_log

    counts = {}
    for path in sorted(settings.feature_dir.rglob("*.parquet")):
        frame = pd.read_parquet(path)
        if "customer_id" in frame.columns:
            counts[path.name] = int((frame["customer_id"] == customer_id).sum())
    log = read_event_log(settings)
    counts["event_log"] = int((log["customer_id"] == customer_id).sum())
    return counts


def _check_erasure(feature_home, settings, store, online_rows) -> None:  # noqa: ANN001
    """Erase one customer with a live event and a basket: nothing of them is left in any store,
    the neighbour's features and rows are exactly as before, and a second erase finds nothing."""
    from features.erase import erase_customer
    from features.events import parse_event
    from features.ingest import append_event, push_realtime

    gone, kept = list(_final_rows(feature_home).index[:2])
    now = datetime.now(UTC)
    for i, cid in enumerate((gone, kept)):
        event = {"ts": now.isoformat(), "channel": "app", "event_type": "session_start"}
        event.update(event_id=f"e{i}", customer_id=cid)
        assert append_event(settings, parse_event(event), cid)
        state = {"basket_items": 1, "basket_value": 5.0, "last_channel": "app"}
        push_realtime(store, cid, state, now)
    before = read_online(store, "profile_v1", [gone, kept], now=now)
    assert before[0]["plan"] is not None and before[0]["basket_items"] == 1
    rows_gone, rows_kept = _rows_of(settings, gone), _rows_of(settings, kept)
    assert rows_gone["customer_features.parquet"] > 0 and rows_gone["event_log"] > 0

    erased = erase_customer(store, gone, settings)

    assert erased == {
        "online": online_rows,
        "offline": sum(n for k, n in rows_gone.items() if k != "event_log"),
        "event_log": rows_gone["event_log"],
    }
    after = read_online(store, "profile_v1", [gone, kept], now=now)
    assert all(
        v is None for k, v in after[0].items() if k not in ("customer_id", "basket_abandoned")
    )
    assert after[1] == before[1]
    assert set(_rows_of(settings, gone).values()) == {0}
    assert gone.encode() not in (settings.event_log_dir / "live.db").read_bytes()
    assert _rows_of(settings, kept) == rows_kept
    assert erase_customer(store, gone, settings) == {"online": 0, "offline": 0, "event_log": 0}


def test_erase_customer_sqlite(feature_home, tmp_path) -> None:  # noqa: ANN001
    settings, store = _fresh_home(feature_home, tmp_path)
    from features.store import materialized_views

    # SQLite keeps one row per (customer, feature) in each loaded view's table (a view whose
    # snapshot no test of this session wrote, such as the customer value, holds none)
    per_feature = sum(len(v.features) for v in materialized_views(store))
    _check_erasure(feature_home, settings, store, online_rows=per_feature)
    raw = (settings.feature_dir / "online.db").read_bytes()
    assert _final_rows(feature_home).index[0].encode() not in raw  # secure_delete zeroed it


def test_erase_customer_redis(feature_home, tmp_path) -> None:  # noqa: ANN001
    settings, store = _redis_home(feature_home, tmp_path, "erasure from the Redis store")
    # Redis keeps one hash per customer holding every view
    _check_erasure(feature_home, settings, store, online_rows=1)

"""``read_online`` reads the stored feature views itself and runs the on-demand view's
transform; these tests hold it equal, value for value and type for type, to Feast's own
``get_online_features`` over the same FeatureServices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from features.store import _read_plan, _service, read_online

pytestmark = pytest.mark.slow


def _feast(store, service: str, ids: list[str], now: datetime) -> list[dict]:  # noqa: ANN001
    fs, names = _service(store, service)
    request = {f: now for f in _read_plan(store, service).request_fields}  # request_ts, if any
    rows = [{"customer_id": c, **request} for c in ids]
    cols = store.get_online_features(features=fs, entity_rows=rows).to_dict()
    return [{k: cols[k][i] for k in ["customer_id", *names]} for i in range(len(ids))]


@pytest.mark.parametrize("service", ["profile_v1", "offer_v1", "churn_v1"])
def test_read_online_equals_get_online_features(feature_home, service: str) -> None:  # noqa: ANN001
    ids = list(feature_home.batch()["customer_id"].drop_duplicates()[:40])
    ids += ["no-such-customer", ids[0]]  # unknown, and a repeat within one call
    for now in (datetime.now(UTC), datetime.now(UTC) + timedelta(days=3, microseconds=7)):
        want = _feast(feature_home.store, service, ids, now)
        got = read_online(feature_home.store, service, ids, now=now)
        assert [list(r) for r in got] == [list(r) for r in want]  # same keys, same order
        for g, w in zip(got, want, strict=True):
            for k in w:
                assert g[k] == w[k] and type(g[k]) is type(w[k]), (g["customer_id"], k, g[k], w[k])
    unknown = {k: v for k, v in got[-2].items() if k not in ("customer_id", "basket_abandoned")}
    assert set(unknown.values()) == {None}
    if service != "churn_v1":  # the on-demand view really ran on some baskets
        assert any(r["basket_minutes_since_change"] is not None for r in got)


def test_basket_fields_are_read_for_the_transform_only(feature_home) -> None:  # noqa: ANN001
    """offer_v1 takes three realtime fields, but the basket age needs ``basket_updated_at``
    too: it is read for the transform and not returned."""
    cid = feature_home.batch()["customer_id"].iloc[0]
    row = read_online(feature_home.store, "offer_v1", [cid])[0]
    assert "basket_updated_at" not in row and "basket_minutes_since_change" in row


def test_each_customer_read_as_of_its_own_time(feature_home) -> None:  # noqa: ANN001
    """``now`` per entry (a replay's visits decided together): each row is what a read at
    that time alone gives, a customer asked twice at two times gets two basket ages."""
    ids = list(feature_home.batch()["customer_id"].drop_duplicates()[:6])
    ids += ["no-such-customer", ids[0]]
    base = datetime(2026, 6, 1, 12, tzinfo=UTC)
    times = [base + timedelta(hours=7 * i, microseconds=i) for i in range(len(ids))]
    got = read_online(feature_home.store, "offer_v1", ids, now=times)
    want = [
        read_online(feature_home.store, "offer_v1", [c], now=t)[0]
        for c, t in zip(ids, times, strict=True)
    ]
    assert got == want
    ages = [r["basket_minutes_since_change"] for r in (got[0], got[-1])]
    assert None in ages or ages[1] - ages[0] == 7 * (len(ids) - 1) * 60
    with pytest.raises(ValueError, match="now: 1 times for 8 customers"):
        read_online(feature_home.store, "offer_v1", ids, now=times[:1])

"""The one-query SQLite read of the stored views (``features.online_read.SqliteViews``) gives
what the provider's ``online_read`` gives, in any batch size, and its caches never hide a
write: a value pushed after a read is what the next read returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from features.online_read import ReadPlan, SqliteViews
from features.store import _read_plan, _service

pytestmark = pytest.mark.slow


def _provider_plan(store, service: str) -> ReadPlan:  # noqa: ANN001
    """The same plan, reading through the provider (as for Redis)."""
    fs, names = _service(store, service)
    plan = ReadPlan(store, fs, names)
    plan._sqlite = False
    return plan


@pytest.mark.parametrize("chunk", [SqliteViews.CHUNK, 40, 5])
def test_sqlite_read_equals_the_provider_read(feature_home, monkeypatch, chunk: int) -> None:  # noqa: ANN001
    store = feature_home.store
    monkeypatch.setattr(SqliteViews, "CHUNK", chunk)  # 4 views: 10, then 1 customer a query
    ids = list(feature_home.batch()["customer_id"].drop_duplicates()[:30]) + ["no-such-one"]
    fs, names = _service(store, "profile_v1")
    fast = ReadPlan(store, fs, names)
    assert isinstance(SqliteViews.for_plan(fast, store), SqliteViews)
    want = _provider_plan(store, "profile_v1").stored(store, ids)
    for batch in (ids, ids[:1], ids[-1:]):
        got = fast.stored(store, batch)
        assert list(got) == list(want)  # the same columns in the same order
        for name, column in got.items():
            expect = [want[name][ids.index(c)] for c in batch]
            assert column == expect and [type(v) for v in column] == [type(v) for v in expect]
    again = fast.stored(store, ids)  # from the decode cache now: equal, still
    assert again == want


def test_a_push_is_seen_by_the_next_read(feature_home) -> None:  # noqa: ANN001
    from features.ingest import push_realtime

    store = feature_home.store
    cid = "pushed-by-test-online-sqlite"  # a customer of its own: other tests read the world
    plan = _read_plan(store, "offer_v1")
    assert isinstance(plan._sqlite or SqliteViews.for_plan(plan, store), SqliteViews)
    at = datetime.now(UTC).replace(microsecond=0)
    for items, value in ((3, 12.5), (4, 99.25), (3, 12.5)):  # back to a value seen before
        row = {"basket_items": items, "basket_value": value, "basket_updated_at": at}
        push_realtime(store, cid, row, at)
        got = plan.stored(store, [cid])
        assert (got["basket_items"], got["basket_value"]) == ([items], [value])
        at += timedelta(seconds=1)

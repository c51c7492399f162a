"""The ledger on SQLite and on a real PostgreSQL: idempotent outcomes, cap reads, logs, erase."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from nextbest.db import engine_for
from record.ledger import Ledger, mark_status
from record.tables import DecisionRow, OutcomeRow, now


def _decision(cid: str | None, offer: str | None, channel: str = "web", **kw) -> DecisionRow:
    return DecisionRow(
        decision_id=uuid.uuid4().hex,
        ts=kw.pop("ts", now()),
        customer_id=cid,
        channel=channel,
        context={"page": "home"},
        experiment="exp",
        arm=kw.pop("arm", "treatment"),
        offer_id=offer,
        propensity=0.5 if offer else None,
        probabilities={offer: 0.5} if offer else {},
        scores={"churn_risk": 0.1},
        model_versions={"churn": "1"},
        **kw,
    )


def exercise(ledger: Ledger) -> None:
    """The same checks for every backend."""
    d1, d2 = _decision("c1", "data_addon", "email"), _decision("c1", "data_addon", "web")
    old = _decision("c1", "family_plan", "email", ts=now() - timedelta(days=40))
    for d in (d1, d2, old, _decision("c2", None, arm="holdout")):
        ledger.record_decision(d)
    assert ledger.decision(d1.decision_id).propensity == 0.5
    out = OutcomeRow(
        idempotency_key="k1",
        decision_id=d1.decision_id,
        customer_id="c1",
        type="conversion",
        value=40.0,
        ts=now(),
    )
    assert ledger.record_outcome(out) is True
    assert ledger.record_outcome(out) is False  # the retry counts once
    shows, last = ledger.contact_history("c1", now() - timedelta(days=7))
    assert sorted(s.channel for s in shows) == ["email", "web"] and last is not None
    pending = _decision("c1", "data_addon", "sms", status="pending")  # a queued message counts
    ledger.record_decision(pending)
    assert len(ledger.contact_history("c1", now() - timedelta(days=7))[0]) == 3
    with ledger.engine.begin() as conn:  # cancelled before it was sent: nobody saw it
        assert mark_status(conn, [pending.decision_id], "cancelled") == 1
    assert ledger.decision(pending.decision_id).status == "cancelled"
    assert ledger.contact_history("c1", now() - timedelta(days=7))[0] == shows
    logs = ledger.logs()
    assert len(logs) == 5
    assert "reward" not in logs  # what a decision earned is attribution's (one rule)
    assert set(ledger.experiment_exposures("exp")["arm"]) == {"treatment", "holdout"}
    erased = ledger.erase("c1")
    assert erased["decisions"] == 4 and erased["outcomes"] == 1
    assert ledger.contact_history("c1", now() - timedelta(days=90)) == ([], None)
    assert len(ledger.logs()) == 5  # experiment counts survive, anonymised


def test_sqlite_ledger(tmp_path: Path) -> None:
    exercise(Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.db'}")))


def test_bad_outcome_type() -> None:
    with pytest.raises(
        ValueError, match="type\n  Input should be 'click', 'conversion', 'revenue' or 'open'"
    ):
        OutcomeRow(idempotency_key="k", type="refund", ts=now())


def test_postgresql_ledger(pg_url: str) -> None:
    exercise(Ledger(engine_for(pg_url)))


def test_workers_create_the_schema_at_once_on_postgresql(pg_url: str) -> None:
    """Every service worker creates the tables at start; on PostgreSQL two concurrent CREATE
    TABLEs of one name collide unless they take turns."""
    from concurrent.futures import ThreadPoolExecutor

    from features.graph_store import ensure_schema

    engine = engine_for(pg_url)

    def start_worker(_: int) -> None:
        Ledger(engine)
        ensure_schema(engine)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(start_worker, range(16)))
    exercise(Ledger(engine))


def test_a_ledger_created_before_an_index_gains_it(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    engine = engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    Ledger(engine)
    with engine.begin() as conn:  # the ledger as it was before the online learner's index
        conn.execute(text("DROP INDEX ix_decisions_ts"))
    assert "ix_decisions_ts" not in {i["name"] for i in inspect(engine).get_indexes("decisions")}
    Ledger(engine)
    assert "ix_decisions_ts" in {i["name"] for i in inspect(engine).get_indexes("decisions")}


def test_a_ledger_created_before_a_nullable_column_gains_it(tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    engine = engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    Ledger(engine)
    with engine.begin() as conn:  # a ledger from before the column existed
        conn.execute(text("ALTER TABLE decisions DROP COLUMN propensity"))
    assert "propensity" not in {c["name"] for c in inspect(engine).get_columns("decisions")}
    Ledger(engine)
    assert "propensity" in {c["name"] for c in inspect(engine).get_columns("decisions")}


def test_an_older_ledger_gains_order_offer_and_status_and_its_rows_count_as_shown(
    tmp_path: Path,
) -> None:
    """Issue 12 items 1 and 5 on a database from before them: the nullable columns are added
    on start; decisions without a status were shown, so contact caps count them."""
    from sqlalchemy import inspect, text

    engine = engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    Ledger(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_outcomes_order_id"))
        conn.execute(text("DROP INDEX ix_decisions_customer_shows"))  # newer than status
        for table, column in (("outcomes", "order_id"), ("outcomes", "offer_id"),
                              ("decisions", "status")):  # fmt: skip
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text(
            "INSERT INTO decisions (decision_id, ts, customer_id, channel, context, experiment,"
            " arm, offer_id, probabilities, scores, model_versions, fallback, reason) VALUES"
            " ('d0', :ts, 'c', 'email', '{}', 'e', 'treatment', 'x', '{}', '{}', '{}', 0, '')"
        ), {"ts": f"{now() - timedelta(hours=1):%Y-%m-%d %H:%M:%S.%f}"})  # fmt: skip
    # (a string as SQLAlchemy stores it: Feast registers a global sqlite3 adapter that would
    # bind a raw datetime as epoch seconds once its online store module is imported)
    ledger = Ledger(engine)
    assert {"order_id", "offer_id"} <= {c["name"] for c in inspect(engine).get_columns("outcomes")}
    indexes = {i["name"] for i in inspect(engine).get_indexes("decisions")}
    assert "ix_decisions_customer_shows" in indexes  # the commit's count reads it alone
    assert ledger.decision("d0").status == "shown"
    shown, _ = ledger.contact_history("c", now() - timedelta(days=1))
    assert [s.offers for s in shown] == [("x",)]


def test_a_ledger_from_before_slots_gains_the_column_and_reads_its_rows(tmp_path: Path) -> None:
    """Issue 12 item 3: ``slots`` is nullable, so an older ledger gains it; its rows read as
    having shown their one logged offer."""
    from sqlalchemy import inspect, text

    engine = engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    Ledger(engine)
    with engine.begin() as conn:  # a ledger from before slots were logged
        conn.execute(text("ALTER TABLE decisions DROP COLUMN slots"))
    assert "slots" not in {c["name"] for c in inspect(engine).get_columns("decisions")}
    ledger = Ledger(engine)
    assert "slots" in {c["name"] for c in inspect(engine).get_columns("decisions")}
    old = _decision("c1", "data_addon")
    ledger.record_decision(old)
    with engine.begin() as conn:  # its rows: NULL in the new column
        conn.execute(text("UPDATE decisions SET slots = NULL"))
    assert ledger.decision(old.decision_id).slots == []
    shows, _ = ledger.contact_history("c1", now() - timedelta(days=1))
    assert [s.offers for s in shows] == [("data_addon",)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_slot_counts_in_the_contact_history(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Issue 12 items 3 and 9: each shown offer, every slot, committed or still pending."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else (
        f"sqlite:///{tmp_path / 'ledger.db'}")  # fmt: skip
    ledger = Ledger(engine_for(url))
    slots = [{"offer_id": o, "position": k, "probability": 0.5}
             for k, o in enumerate(["no_offer", "data_addon", "family_plan"])]  # fmt: skip
    three = _decision("c1", "no_offer", slots=slots)
    ledger.record_decision(three)
    assert ledger.decision(three.decision_id).slots == slots
    pending = _decision("c1", "streaming_bundle", "email")
    ledger.pending.hold(pending)  # planned, not yet committed: counted all the same
    shows, _ = ledger.contact_history("c1", now() - timedelta(days=1))
    assert sorted(s.offers for s in shows) == [
        ("no_offer", "data_addon", "family_plan"),
        ("streaming_bundle",),
    ]
    ledger.pending.release([pending])
    assert len(ledger.contact_history("c1", now() - timedelta(days=1)).shows) == 1

"""assign_holdouts: the arms assign_holdout gives one visit at a time, for a whole batch."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from features.identity import Identifiers, IdentityGraph
from nextbest.db import engine_for
from nextbest.settings import Settings
from record.assignment import StickyAssigner, assign_holdout, assign_holdouts
from record.ledger import Ledger

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def world(folder: Path) -> tuple[Ledger, IdentityGraph, Settings, list[tuple]]:
    settings = Settings(home=folder, global_holdout_share=0.2, experiment_holdout_share=0.3)
    engine = engine_for(f"sqlite:///{folder / 'l.db'}")
    ledger, graph = Ledger(engine), IdentityGraph(engine, settings.identity_salt)
    anon = graph.link(Identifiers(cookie_id="ck-1"))
    member = graph.link(Identifiers(login_id="m-1"))
    people = [graph.link(Identifiers(login_id=f"p-{i}")) for i in range(30)]
    # the cookie's first draw is recorded before its person is merged into the member
    assigner = StickyAssigner(ledger)
    assign_holdout(anon, {"customer_id": anon}, "nbo", assigner, graph, settings, NOW)
    assigner.flush()
    graph.link(Identifiers(login_id="m-1", cookie_id="ck-1"))
    visits = [(anon, {"customer_id": anon}, "nbo", None), (member, {}, "nbo", None)]
    visits += [(p, {"customer_id": p}, "nbo", None) for p in people]
    visits += [(None, {"email": "Someone@Example.com "}, "nbo", None), (None, {}, "nbo", None)]
    visits += [(people[0], {}, "spring", 0.5), (people[0], {}, "nbo", None)]
    visits += [(None, {"email": "someone@example.com"}, "nbo", None)]
    return ledger, graph, settings, visits


def test_assign_holdouts_equals_assign_holdout_one_by_one(tmp_path: Path) -> None:
    ledger, graph, settings, visits = world(tmp_path / "one")
    assigner = StickyAssigner(ledger, flush_rows=5)
    alone = [
        assign_holdout(c, ids, e, assigner, graph, settings, NOW, experiment_share=s)
        for c, ids, e, s in visits
    ]
    ledger2, graph2, settings2, visits2 = world(tmp_path / "many")
    together = assign_holdouts(
        visits2, StickyAssigner(ledger2, flush_rows=5), graph2, settings2, NOW
    )
    assert together == alone
    assert alone[33] is None and alone[32] is not None  # no identifier at all: no arm
    assert alone[32] == alone[-1]  # one e-mail address however it is spelt
    assert {a.arm for a in alone if a} == {"treatment", "holdout"}
    assert alone[0] == alone[1]  # merged: one person, one arm

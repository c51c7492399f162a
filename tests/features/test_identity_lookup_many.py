"""IdentityGraph.lookup_many: the same answers as lookup, one at a time, in one batch."""

from __future__ import annotations

from features.identity import Identifiers
from tests.features.test_identity import BATCH, HOME, frame, new_graph


def test_lookup_many_answers_as_lookup_does() -> None:
    graph = new_graph()
    ids = dict(zip(*graph.resolve(BATCH).T.values, strict=True))
    graph.resolve(frame({"id": "z", "loyalty_id": "LC-9", "email": "amy@example.com"}))
    visitors = [
        Identifiers(email=" AMY@example.com"),
        Identifiers(phone="+44 7700 900777"),
        Identifiers(login_id="U9"),
        Identifiers(cookie_id="ck9"),
        Identifiers(email=HOME),  # a household address names two: nobody
        Identifiers(email=HOME, login_id="u9"),
        Identifiers(email="nobody@example.com"),
        Identifiers(phone="not a phone"),
        Identifiers(customer_id=ids["c"]),
        Identifiers(customer_id="C-never-seen"),
        Identifiers(customer_id="C-never-seen", login_id="u9"),  # another identifier resolves
        Identifiers(),
        Identifiers(email=" AMY@example.com"),  # twice in a batch
    ]
    expected = [graph.lookup(v) for v in visitors]
    assert graph.lookup_many(visitors) == expected
    assert expected[1] == ids["b"] and expected[4] is None and expected[9] is None
    assert expected[10] == ids["b"]
    assert graph.lookup_many([]) == []


def test_lookup_many_follows_merges() -> None:
    graph = new_graph()
    anon = graph.link(Identifiers(cookie_id="ck-1"))
    member = graph.link(Identifiers(login_id="member-1"))
    kept = graph.link(Identifiers(login_id="member-1", cookie_id="ck-1"))  # bridges the two
    gone = member if kept == anon else anon
    many = [Identifiers(customer_id=gone), Identifiers(cookie_id="ck-1")]
    assert graph.lookup_many(many) == [graph.lookup(m) for m in many] == [kept, kept]

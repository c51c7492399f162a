"""The console in process: sign-in, sessions, roles and CSRF, search through the identity graph,
the customer page and its actions through the channels' functions (real ledger, graph and
catalogue; the profile table as features)."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from features.ingest import ingest_event
from nextbest.settings import Settings
from serving import erasure, notes
from serving.console import access, pages
from serving.console.directory import find, name_of
from serving.deps import Deps
from tests.serving.conftest import PROFILES, real_deps, table_reader
from tests.serving.console_fixtures import (
    ADMIN_KEY,
    AGENT_KEY,
    ANN_EMAIL,
    LANDLINE,
    MARKETER_KEY,
    MESSY_PHONE,
    seed_directory,
)


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    """Ann (three records, postpaid: offers to show), the Jones household, the real catalogue."""
    settings = Settings(home=tmp_path, global_holdout_share=0.0, experiment_holdout_share=0.0)
    settings = settings.model_copy(update={"console_directory": seed_directory(settings)})
    d = real_deps(settings, {})
    d.ingest = ingest_event  # events logged as the service logs them (no feature store here)
    ann = find(ANN_EMAIL, d)[0].customer_id
    d.features = table_reader({ann: dict(PROFILES["c-post"], consent_call_centre=True)})
    return d


@pytest.fixture
def app(deps: Deps) -> Iterator[TestClient]:
    with TestClient(Starlette(routes=pages.routes(lambda: deps)), follow_redirects=False) as c:
        yield c


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign in with ``key`` (signed out first); the session's CSRF token."""
    client.cookies.clear()
    token = _csrf(client.get("/console/signin").text)
    r = client.post("/console/signin", data={"key": key, "csrf": token})
    assert r.status_code == 303, r.text
    return _csrf(client.get(r.headers["location"]).text)


def test_sign_in_sets_a_strict_httponly_cookie_and_refuses_bad_keys(app: TestClient) -> None:
    token = _csrf(app.get("/console/signin").text)
    bad = app.post("/console/signin", data={"key": "channel-dev-key", "csrf": token})
    assert bad.status_code == 401 and "key: not a console key" in bad.text
    no_csrf = app.post("/console/signin", data={"key": AGENT_KEY, "csrf": "forged"})
    assert no_csrf.status_code == 403 and "csrf: the form expired" in no_csrf.text
    token = _csrf(no_csrf.text)  # each answer's form comes with a token of its own
    r = app.post("/console/signin", data={"key": AGENT_KEY, "csrf": token})
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and r.headers["location"] == "/console/search"
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "agent-dev-key" not in cookie


def test_no_session_gets_the_sign_in_form(app: TestClient) -> None:
    for path in ("/console", "/console/search", "/console/offers", "/console/customer/x"):
        r = app.get(path)
        assert r.status_code == 401 and "<h1>Sign in</h1>" in r.text, path
    forged = {access.COOKIE: "e30.bm90LWEtbWFj"}
    assert app.get("/console/search", cookies=forged).status_code == 401


ROLE_PAGES = [  # (key, page, status): agents and clerks the customers, marketers the rest
    (AGENT_KEY, "/console/search", 200),
    (AGENT_KEY, "/console/offers", 403),
    (AGENT_KEY, "/console/models", 403),
    (MARKETER_KEY, "/console/offers", 200),
    (MARKETER_KEY, "/console/journeys", 200),
    (MARKETER_KEY, "/console/uplift", 200),
    (MARKETER_KEY, "/console/models", 200),
    (MARKETER_KEY, "/console/search", 403),
    (ADMIN_KEY, "/console/search", 200),
    (ADMIN_KEY, "/console/offers", 200),
]


def test_roles_open_their_pages_only(app: TestClient) -> None:
    wrong = []
    for key, path, status in ROLE_PAGES:
        sign_in(app, key)
        r = app.get(path)
        if r.status_code != status or (status == 403 and "may not open this page" not in r.text):
            wrong.append((key, path, r.status_code))
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert wrong == []


def test_only_admins_erase_and_promote(app: TestClient, deps: Deps) -> None:
    token = sign_in(app, AGENT_KEY)
    ann = find(ANN_EMAIL, deps)[0].customer_id
    r = app.post(f"/console/customer/{ann}/erase", data={"csrf": token, "confirm": ann})
    assert r.status_code == 403
    token = sign_in(app, MARKETER_KEY)
    r = app.post("/console/models/churn/promote", data={"csrf": token})
    assert r.status_code == 403 and "may not open this page" in r.text


def test_every_form_needs_the_session_csrf_token(app: TestClient, deps: Deps) -> None:
    sign_in(app, AGENT_KEY)
    ann = find(ANN_EMAIL, deps)[0].customer_id
    for path, data in [
        ("/console/search", {"q": ANN_EMAIL}),
        (f"/console/customer/{ann}/intent", {"product": "data_10gb"}),
        (f"/console/customer/{ann}/answer", {"answer": "accepted", "offer_id": "data_addon"}),
        ("/console/signout", {}),
    ]:
        r = app.post(path, data={**data, "csrf": "not-the-token"})
        assert r.status_code == 403 and "csrf: missing or wrong form token" in r.text, path


def test_search_finds_one_customer_or_lists_a_household(app: TestClient, deps: Deps) -> None:
    token = sign_in(app, AGENT_KEY)
    ann = find(ANN_EMAIL, deps)[0].customer_id
    for query in (MESSY_PHONE, " ANN.SMITH@example.com ", "lc-1001", "ann.smith", ann):
        r = app.post("/console/search", data={"q": query, "csrf": token})
        assert (r.status_code, r.headers.get("location")) == (303, f"/console/customer/{ann}")
    shared = app.post("/console/search", data={"q": LANDLINE, "csrf": token})
    assert shared.status_code == 200 and "2 customers share this identifier" in shared.text
    assert "Bob Jones" in shared.text and "Carol Jones" in shared.text
    nobody = app.post("/console/search", data={"q": "nobody@example.com", "csrf": token})
    assert "No customer found" in nobody.text
    empty = app.post("/console/search", data={"q": "  ", "csrf": token})
    assert empty.status_code == 400 and "q: type an e-mail" in empty.text


def test_customer_page_shows_who_and_logs_the_decision_on_the_agents_channel(
    app: TestClient, deps: Deps
) -> None:
    sign_in(app, AGENT_KEY)
    ann = find(ANN_EMAIL, deps)[0].customer_id
    r = app.get(f"/console/customer/{ann}")
    assert r.status_code == 200
    assert "Ann Smith" in r.text and "Smyth" in r.text and "LC-1001" in r.text  # 3 records
    assert "call_centre: yes" in r.text
    shown = deps.ledger.logs()
    assert list(shown["channel"]) == ["call_centre"] and list(shown["customer_id"]) == [ann]
    unknown = app.get("/console/customer/Cnobody")
    assert unknown.status_code == 404 and "customer_id: no such customer" in unknown.text


def test_actions_go_through_events_and_outcomes(app: TestClient, deps: Deps) -> None:
    token = sign_in(app, "clerk-dev-key")
    ann = find(ANN_EMAIL, deps)[0].customer_id
    page = app.get(f"/console/customer/{ann}").text
    decision_id = re.search(r'name="decision_id" value="([^"]+)"', page).group(1)
    offer_id = re.search(r'name="offer_id" value="([^"]+)"', page).group(1)
    bad = app.post(f"/console/customer/{ann}/intent", data={"csrf": token, "product": "nope"})
    assert bad.status_code == 400 and "product: 'nope' is not in the catalogue" in html.unescape(
        bad.text
    )
    none = app.post(f"/console/customer/{ann}/intent", data={"csrf": token, "note": "x"})
    assert none.status_code == 400 and "product: choose at least one product" in none.text
    r = app.post(
        f"/console/customer/{ann}/intent",
        data={"csrf": token, "product": ["data_10gb", "family_share"], "note": "soon"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?done=intent")
    again = app.get(r.headers["location"]).text  # the conversation's offers, not a new decision
    assert decision_id in again and len(deps.ledger.logs()) == 1
    live = app.get(f"/console/customer/{ann}/live").text
    assert live.count("purchase_intent") == 2 and "store" in live and "soon" in live
    answer = {"csrf": token, "decision_id": decision_id, "offer_id": offer_id}
    for _ in range(2):  # a double click counts once
        app.post(f"/console/customer/{ann}/answer", data={**answer, "answer": "accepted"})
    after = app.get(f"/console/customer/{ann}?done=accepted").text
    assert "Customer's answer:</strong> accepted" in after  # no second set of buttons
    outcomes = deps.ledger.outcomes_frame()
    assert list(outcomes["type"]) == ["conversion"]
    assert list(outcomes["decision_id"]) == [decision_id]
    app.post(f"/console/customer/{ann}/answer", data={**answer, "answer": "callback"})
    assert [n.kind for n in notes.of(deps.ledger.engine, [ann])] == ["callback", "intent"]
    wrong = app.post(f"/console/customer/{ann}/answer", data={**answer, "answer": "maybe"})
    assert wrong.status_code == 400 and "answer: must be one of" in wrong.text


def test_erasure_takes_the_console_notes(deps: Deps) -> None:
    ann = find(ANN_EMAIL, deps)[0].customer_id
    notes.add(deps.ledger.engine, ann, "agent", "intent", deps.clock(), "wants a phone")
    assert erasure.erase(ann, deps)["status"] == "done"
    with deps.ledger.engine.connect() as conn:
        assert conn.execute(select(notes.console_notes)).all() == []


def test_sessions_are_signed_and_expire(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    who, cookie = access.new_session("ann", "agent", s)
    assert access.session_of(cookie, s) == who
    payload, mac = cookie.rsplit(".", 1)
    forged = access.new_session("ann", "admin", s)[1].rsplit(".", 1)[0] + "." + mac
    assert access.session_of(forged, s) is None
    other = s.model_copy(update={"console_secret": "another"})
    assert access.session_of(cookie, other) is None
    old = s.model_copy(update={"console_session_minutes": 1})
    who, cookie = access.new_session("ann", "agent", old)
    assert access.session_of(cookie, old) is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "time", lambda: who.expires + 1)
        assert access.session_of(cookie, old) is None


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (["ann:agent"], "each entry must be user:role:key"),
        (["ann:boss:k"], "role one of agent, clerk, marketer, admin"),
        ([":agent:k"], "each entry must be user:role:key"),
    ],
)
def test_console_keys_are_checked_at_load(keys: list[str], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Settings(console_keys=keys)


def test_development_console_secrets_cannot_serve_beyond_loopback() -> None:
    from nextbest.settings import development_secrets_error

    assert "NEXTBEST_CONSOLE_SECRET" in development_secrets_error(Settings(), "0.0.0.0")
    assert "NEXTBEST_CONSOLE_KEYS" in development_secrets_error(Settings(), "0.0.0.0")


def test_a_name_is_the_most_frequent_spelling_written_as_a_name() -> None:
    recs: list[dict[str, Any]] = [
        {"first_name": "theo", "last_name": "allen"},
        {"first_name": "Theo", "last_name": "Allen"},
        {"first_name": "THEO", "last_name": "ALLEN"},
        {"first_name": "Theo", "last_name": "Allen"},
    ]
    assert name_of(recs) == "Theo Allen"
    assert name_of([{"first_name": None, "last_name": None}]) == "(no name on file)"


def test_the_session_cookie_is_secure_over_https(deps: Deps) -> None:
    app = Starlette(routes=pages.routes(lambda: deps))
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        token = _csrf(client.get("/console/signin").text)
        r = client.post("/console/signin", data={"key": AGENT_KEY, "csrf": token})
    assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]

"""The console in a real browser: Debian's headless Chromium driven by Playwright against a real
``bentoml serve`` on 127.0.0.1, over a tiny simulated world with its features built.

One server, one browser: an agent signs in, finds a customer by a messily written phone, sees
the basket a web event left a moment before (and a second one arrive without reloading),
records an intent (then in the profile JSON), accepts an offer (then in the ledger), signs
out; an ambiguous landline lists both people; a marketer opens every page of theirs; a
keyboard-only pass signs in, searches and signs out. No page may log a console error.
Screenshots of every page go to ``artifacts/console/`` (printed)."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from nextbest.db import engine_for
from nextbest.settings import PROJECT_ROOT, Settings
from record.ledger import Ledger
from record.tables import now
from serving import run
from tests.serving.conftest import CHANNEL
from tests.serving.console_fixtures import (
    ADMIN_KEY,
    AGENT_KEY,
    LANDLINE,
    MARKETER_KEY,
    RECORDS,
)
from tests.serving.journey_fixtures import EXAMPLES

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
SHOTS = PROJECT_ROOT / "artifacts" / "console"
# what a keyboard user hears for the focused element: its label's text, else its own text
FOCUSED = "(e => (e.labels && e.labels.length ? e.labels[0] : e).textContent.trim())(document.activeElement)"  # noqa: E501
DESKTOP, TABLET = {"width": 1366, "height": 768}, {"width": 820, "height": 1180}
HOUSEHOLD = pd.DataFrame(
    [
        ("hh1", "crm", "Bob", "Jones", "bob@jones.example", LANDLINE, None, "bobj", None),
        (
            "hh2",
            "crm",
            "Carol",
            "Jones",
            "carol@jones.example",
            "02079460000",
            None,
            "carolj",
            None,
        ),
    ],
    columns=RECORDS.columns,
)


def _messy(e164: str) -> str:
    """+447700900123 as a caller reads it out: +44 (0)7700-900 123."""
    national = e164.removeprefix("+44")
    return f"+44 (0){national[:4]}-{national[4:7]} {national[7:]}"


def _world(settings: Settings) -> dict[str, Any]:
    """A tiny world with its features in Feast, a household sharing a landline, and the person
    the agent will look for: a postpaid customer reachable by a mobile of their own."""
    from features.build import build_features
    from features.identity import Identifiers, graph_for
    from features.normalize import phone_key
    from features.store import apply_repo, get_store, materialize
    from simulator.world import simulate_world

    simulate_world(customers=20, days=14, seed=7, out=settings.ensure_dirs().world_dir)
    build_features(settings)
    store = get_store(settings)
    apply_repo(store)
    with contextlib.redirect_stderr(io.StringIO()):
        materialize(store)
    graph = graph_for(settings)
    graph.resolve(HOUSEHOLD.drop(columns=["source"]))
    records = pd.read_parquet(settings.world_dir / "identities.parquet")
    directory = pd.concat([records.drop(columns=["true_person_id", "created_at"]), HOUSEHOLD])
    path = settings.home / "directory.csv"
    directory.to_csv(path, index=False)
    people = pd.read_parquet(settings.world_dir / "people.parquet").set_index("person_id")
    for r in records.dropna(subset=["phone", "email"]).itertuples():
        e164 = phone_key(r.phone, "GB")
        if not (e164 and e164.startswith("+447")) or people.plan[r.true_person_id] == "prepaid":
            continue
        cid = graph.lookup(Identifiers(phone=e164))
        if cid is not None:
            return {"directory": path, "customer_id": cid, "phone": _messy(e164), "email": r.email}
    raise AssertionError("the tiny world has no postpaid customer with a mobile of their own")


class Browser:
    """One page of the browser, its console errors collected and its screenshots taken."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base, self.errors = page, base, []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def refused(self, status: int) -> None:
        """The page just loaded was refused on purpose: Chromium's console line for it is
        expected (once), every other error still counts."""
        line = f"the server responded with a status of {status}"
        expected = next((e for e in self.errors if line in e), None)
        assert expected is not None, (status, self.errors)
        self.errors.remove(expected)

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def sign_in(self, key: str) -> None:
        self.go("/console/signin")
        self.page.get_by_label("Console key").fill(key)
        with self.page.expect_navigation():
            self.page.get_by_role("button", name="Sign in").click()


def _headings_in_order(page: Any) -> None:
    """One h1, and no heading more than one level below the one before it."""
    levels = page.eval_on_selector_all("h1,h2,h3,h4", "hs => hs.map(h => +h.tagName[1])")
    assert levels.count(1) == 1, levels
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False)), levels


# WCAG 2 contrast of every element holding text against its nearest opaque background
CONTRAST = """() => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => v / 255)
    .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
    .reduce((a, v, i) => a + v * [0.2126, 0.7152, 0.0722][i], 0);
  const bg = e => { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e)
    .backgroundColor); if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
  return [...document.querySelectorAll("body *")].filter(e => e.offsetParent !== null &&
      [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
    .map(e => { const a = lum(rgb(getComputedStyle(e).color)), b = lum(bg(e));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      return [e.textContent.trim().slice(0, 30), ratio]; })
    .filter(([, ratio]) => ratio < 4.5);
}"""


def _contrast(page: Any) -> None:
    """No text below WCAG AA's 4.5:1 against its background."""
    low = page.evaluate(CONTRAST)
    assert low == [], low


def _labelled(page: Any) -> None:
    """Every visible input, select and textarea has a label the browser knows."""
    unlabelled = page.eval_on_selector_all(
        "input:not([type=hidden]),select,textarea",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.name)",
    )
    assert unlabelled == [], unlabelled


@pytest.mark.slow
def test_console_in_a_browser(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("no Chromium here: `apt-get install -y chromium` (make test does, as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    settings = Settings(home=tmp_path / "home", workers=1)
    world = _world(settings)
    journey = yaml.safe_load((EXAMPLES / "abandoned_basket.yaml").read_text())
    journey["rules"]["holdout_share"] = 0.0
    (settings.home / "journeys").mkdir()
    (settings.home / "journeys" / "abandoned_basket.yaml").write_text(yaml.safe_dump(journey))
    cid, email = world["customer_id"], world["email"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    env = {
        "NEXTBEST_GLOBAL_HOLDOUT_SHARE": "0",
        "NEXTBEST_EXPERIMENT_HOLDOUT_SHARE": "0",
        "NEXTBEST_CONSOLE_DIRECTORY": str(world["directory"]),
        "NEXTBEST_REPORT_EVERY_MINUTES": "0",
        "NEXTBEST_JOURNEY_POLL_SECONDS": "0.2",
    }
    log = tmp_path / "server.log"
    with (
        run.served(settings, log=log, **env) as base,
        httpx.Client(base_url=base, headers=CHANNEL, timeout=30) as api,
        sync_api.sync_playwright() as pw,
    ):
        # left on the website an hour ago: the abandoned_basket journey takes the customer in
        basket = {
            "ts": (now() - timedelta(minutes=61)).isoformat(),
            "channel": "web",
            "event_type": "basket_add",
            "email": email,
            "product_id": "phone_upgrade_24m",
            "value": 499.0,
        }
        assert api.post("/events", json=basket).status_code == 200
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        b = Browser(browser.new_page(viewport=DESKTOP), base)
        page = b.page
        page.set_default_timeout(10_000)

        # an agent signs in, finds the customer by a messy phone, sees the web basket
        b.go("/console/customer/" + cid)
        assert page.get_by_role("heading", level=1).inner_text() == "Sign in"  # no session
        b.refused(401)
        _labelled(page)
        _contrast(page)
        b.shot("01-signin")
        b.sign_in("not-a-key")
        assert "not a console key" in page.get_by_role("alert").inner_text()
        b.refused(401)
        b.sign_in(AGENT_KEY)
        assert page.url.endswith("/console/search")
        b.shot("02-search")
        page.get_by_label("E-mail, phone").fill(world["phone"])
        page.get_by_role("button", name="Find").click()
        page.wait_for_url(f"**/console/customer/{cid}")
        assert "phone_upgrade_24m" in page.get_by_test_id("basket").inner_text()
        assert "web" in page.get_by_test_id("basket").inner_text()
        journeys = page.locator("#journeys-h").locator("xpath=..")
        journeys.get_by_text("abandoned_basket").first.wait_for()  # entered by the runner
        _headings_in_order(page)
        _labelled(page)
        _contrast(page)
        b.shot("03-customer")
        page.set_viewport_size(TABLET)
        b.shot("04-customer-tablet")
        page.set_viewport_size(DESKTOP)

        # a new web event shows without reloading, within a second or so of the poll
        more = {**basket, "ts": now().isoformat(), "product_id": "data_10gb", "value": 5.0}
        sent = time.monotonic()
        assert api.post("/events", json=more).status_code == 200
        page.get_by_test_id("basket").get_by_text("data_10gb").wait_for(timeout=5000)
        seen = time.monotonic() - sent
        print(f"\nconsole: a web event showed on the open page after {seen:.2f} s")

        # pause the journey for this customer: /journeys/pause's function, seen in the profile
        page.get_by_role("button", name="Pause abandoned_basket").click()
        page.wait_for_url("**?done=journey")
        assert "journey updated" in page.get_by_role("status").first.inner_text()
        states = [j["status"] for j in api.get(f"/profile/{cid}").json()["journeys"]]
        assert states == ["paused"], states

        # record an intent: it is in the profile JSON the channels read
        page.get_by_label("10 GB data add-on").check()
        page.get_by_label("Note").fill("wants it before the weekend")
        page.get_by_role("button", name="Record intent").click()
        page.wait_for_url("**?done=intent")
        assert "purchase intent" in page.get_by_role("status").first.inner_text()
        profile = api.get(f"/profile/{cid}").json()
        intents = [a for a in profile["activity"] if a["what"] == "purchase_intent"]
        assert intents and intents[0]["channel"] == "call_centre", profile["activity"]

        # accept the first real offer: a conversion in the ledger, on that decision (with no
        # model promoted the fallback draws offers at random: another view, another draw)
        for _ in range(10):
            if page.get_by_role("button", name="Accepted").count():
                break
            page.reload()
        accept = page.get_by_role("button", name="Accepted").first
        form = accept.locator("xpath=..")
        offer_id = form.locator("input[name=offer_id]").input_value()
        decision_id = form.locator("input[name=decision_id]").input_value()
        accept.click()
        page.wait_for_url("**?done=accepted")
        assert "offer accepted" in page.get_by_role("status").first.inner_text()
        b.shot("05-customer-after-actions")
        outcomes = Ledger(engine_for(settings.ledger_db_url)).outcomes_frame()
        mine = outcomes[outcomes["decision_id"] == decision_id]
        assert list(mine["type"]) == ["conversion"] and list(mine["offer_id"]) == [offer_id]

        # an ambiguous landline lists both people instead of guessing
        b.go("/console/search")
        page.get_by_label("E-mail, phone").fill("+44 20 7946 0000")
        page.get_by_role("button", name="Find").click()
        page.get_by_role("heading", name="2 customers share this identifier").wait_for()
        assert page.get_by_role("link", name="Bob Jones").count() == 1
        assert page.get_by_role("link", name="Carol Jones").count() == 1
        b.shot("06-search-ambiguous")
        b.go("/console/offers")
        assert "may not open this page" in page.get_by_role("alert").inner_text()
        b.refused(403)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/console/signin")
        b.go("/console/search")
        assert page.get_by_role("heading", level=1).inner_text() == "Sign in"  # session gone
        b.refused(401)

        # a marketer's pages
        b.sign_in(MARKETER_KEY)
        for path, name, heading in [
            ("/console/offers", "07-offers", "Offer catalogue"),
            ("/console/journeys", "08-journeys", "Journeys"),
            ("/console/uplift", "09-uplift", "Uplift report"),
            ("/console/models", "10-models", "Models in production"),
        ]:
            b.go(path)
            assert page.get_by_role("heading", level=1).inner_text() == heading
            _headings_in_order(page)
            _contrast(page)
            b.shot(name)
        b.go(f"/console/customer/{cid}")
        assert "may not open this page" in page.get_by_role("alert").inner_text()
        b.refused(403)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/console/signin")

        # keyboard only: sign in as admin, search, open the customer, sign out
        k = Browser(browser.new_page(viewport=DESKTOP), base)
        k.page.set_default_timeout(10_000)
        k.go("/console/signin")
        k.page.keyboard.type(ADMIN_KEY)  # the key field has the focus on arrival
        k.page.keyboard.press("Enter")
        k.page.wait_for_url("**/console/search")
        k.page.keyboard.type(world["phone"])  # so has the search field
        k.page.keyboard.press("Enter")
        k.page.wait_for_url(f"**/console/customer/{cid}")
        k.page.keyboard.press("Tab")
        assert k.page.evaluate("document.activeElement.textContent") == "Skip to content"
        k.page.keyboard.press("Enter")  # to the page's content, past the header

        def tab_to(label: str, limit: int = 60) -> None:
            """Tab forward until the focused element's label or text is ``label``."""
            for _ in range(limit):
                k.page.keyboard.press("Tab")
                if k.page.evaluate(FOCUSED) == label:
                    return
            raise AssertionError(f"{label!r} is not reachable with the keyboard")

        tab_to("Streaming bundle")  # an intent, by keyboard alone
        k.page.keyboard.press("Space")
        tab_to("Record intent")
        k.shot("11-keyboard-focus")
        k.page.keyboard.press("Enter")
        k.page.wait_for_url("**?done=intent")
        tab_to("Sign out")
        k.page.keyboard.press("Enter")
        k.page.wait_for_url("**/console/signin")
        intents = [a["detail"] for a in api.get(f"/profile/{cid}").json()["activity"]]
        assert "streaming_plus" in intents, intents
        browser.close()
    assert b.errors == [] and k.errors == [], (b.errors, k.errors)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert world["phone"] not in text and email not in text  # searched for by POST only
    assert "console agent(agent) GET /console/customer/" in text  # the access log
    print(f"console screenshots: {SHOTS}")

"""The demo's journey stage: one customer's abandoned-basket dialog through the real service
and its journey runner, and the journey's lift over its holdout beside the truth.

The live service runs the shipped ``abandoned_basket`` journey with its waits shortened to
seconds (a demo cannot wait an hour for the e-mail and a day for the SMS); everything else in
it (holdout, consent, caps, the offers, the exits) is the shipped file's, except its quiet
hours: a dialog of seconds run at night would wait for the morning. A sender's part is
played here: it claims the outbox's messages and confirms their delivery, the customer never
opens the e-mail, and finally buys in a store, which ends the journey at once.

The lift is measured on the simulated world by ``simulator.journey_sim`` with the report's
statistics (``benchmarks.journey_coverage``): 30 days of comebacks cannot be waited for live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from nextbest.settings import Settings

JOURNEY = "abandoned_basket"
# the shipped file's waits -> the demo's: basket idle 60m, e-mail after 1h, SMS after 24h,
# a day to click the SMS (the demo's customer buys in a store meanwhile)
DEMO_WAITS = {"idle": "4s", "wait_hour": "3s", "opened": "6s", "clicked": "60s"}
PRODUCT = "data_10gb"


def install_demo_journey(settings: Settings) -> Path:
    """The shipped abandoned-basket journey, waits in seconds, as the home's active journey."""
    from journeys.load import shipped_examples

    data = yaml.safe_load((shipped_examples() / f"{JOURNEY}.yaml").read_text(encoding="utf-8"))
    data["entry"]["idle"] = DEMO_WAITS["idle"]
    data["rules"].pop("quiet_hours", None)  # a dialog of seconds cannot wait for the morning
    for step in data["steps"]:
        if step["id"] == "wait_hour":
            step["duration"] = DEMO_WAITS["wait_hour"]
        elif step["id"] in ("opened", "clicked"):
            step["timeout"] = DEMO_WAITS[step["id"]]
    folder = settings.journeys_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{JOURNEY}.yaml"
    note = "# nextbest demo: the shipped abandoned_basket, waits in seconds, no quiet hours\n"
    path.write_text(note + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class _Dialog:
    """What the demo saw, with the seconds since the basket was left."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[tuple[float, str, str]] = []

    def saw(self, channel: str, what: str) -> None:
        self.lines.append((time.monotonic() - self.t0, channel, what))

    def table(self, cid: str) -> Table:
        table = Table(title=f"{cid}'s abandoned-basket dialog (waits shortened to seconds)")
        for col in ("s", "channel", "what happened"):
            table.add_column(col, overflow="fold")
        for t, ch, what in self.lines:
            table.add_row(f"{t:5.1f}", ch, what)
        return table


def _until(found: Callable[[], Any], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while (got := found()) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    return got


def _instance(settings: Settings, cid: str) -> dict[str, Any] | None:
    """The customer's newest instance of the journey, read from the ledger like an auditor."""
    from journeys.state import journey_instances as ji
    from nextbest.db import engine_for

    q = select(ji).where(ji.c.customer_id == cid, ji.c.journey == JOURNEY)
    with engine_for(settings.ledger_db_url).connect() as conn:
        row = conn.execute(q.order_by(ji.c.entered_at.desc())).mappings().first()
    return dict(row) if row else None


def _step_log(settings: Settings, instance_id: str) -> list[dict[str, Any]]:
    from journeys.state import journey_steps as js
    from nextbest.db import engine_for

    q = select(js).where(js.c.instance_id == instance_id).order_by(js.c.seq)
    with engine_for(settings.ledger_db_url).connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _message(client: httpx.Client, cid: str, channel: str) -> dict[str, Any] | None:
    """The sender's claim of the customer's message on ``channel``, if one is queued."""
    r = client.get("/outbox", params={"channel": channel})
    r.raise_for_status()
    mine = [m for m in r.json()["messages"] if m["customer_id"] == cid]
    return mine[0] if mine else None


def _event(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"ts": datetime.now(UTC).isoformat(), **fields}
    r = client.post("/events", json=body)
    r.raise_for_status()
    return r.json()


def _reachable(settings: Settings, cid: str, store: Any) -> bool:
    """Whether the customer consents to both the e-mail and the SMS, so the demo shows the
    whole dialog (a customer without consent gets the steps skipped, with the reason)."""
    from features.store import unified_profile

    features = unified_profile(settings, cid, store)["features"]
    return bool(features.get("consent_email")) and bool(features.get("consent_sms"))


def _step(settings: Settings, instance_id: str, step_id: str) -> dict[str, Any] | None:
    """The step's row once the runner took it (sent, skipped or banner)."""
    done = [s for s in _step_log(settings, instance_id) if s["step_id"] == step_id]
    return done[0] if done else None


def journey_story(
    client: httpx.Client, settings: Settings, logins: list[str], console: Console
) -> dict[str, Any]:
    """A customer leaves a basket on the web: the banner on the next visit, the e-mail, the SMS
    when the e-mail is not opened, and the end of it all when they buy in a store. Customers
    the journey holds out get nothing; the demo says so and tries the next one."""
    from features.store import get_store

    store, held_out = get_store(settings), 0
    for login in logins[:40]:
        seen = _event(client, channel="web", event_type="session_start", login_id=login)
        cid = seen.get("customer_id")
        if cid is None or not _reachable(settings, cid, store):
            continue
        dialog = _Dialog()
        _event(client, channel="web", event_type="basket_add", login_id=login,
               product_id=PRODUCT, value=10.0)  # fmt: skip
        dialog.saw("web", f"basket left: {PRODUCT}")
        inst = _until(lambda cid=cid: _instance(settings, cid), 20)
        if inst is None:
            continue  # no entry (the global holdout, or a cool-down from an earlier run)
        if inst["arm"] == "holdout":
            held_out += 1
            console.print(f"{cid}: held out of {JOURNEY} (gets nothing; its comeback is counted)")
            continue
        iid = inst["instance_id"]
        dialog.saw("-", f"entered {JOURNEY} (treatment) after the idle wait")
        _until(lambda i=iid: _step(settings, i, "banner"), 10)  # taken in the entering round
        visit = client.post("/decide", json={"login_id": login, "channel": "web"}).json()
        top = visit["offers"][0]["offer_id"] if visit["offers"] else "nothing"
        dialog.saw("web", f"next visit: banner under {visit['experiment']}: {top}")
        view = client.get(f"/profile/{cid}", params={"channel": "call_centre"}).json()
        where = [(j["journey"], j["step"], (j.get("next_contact") or {}).get("channel"))
                 for j in view["journeys"]]  # fmt: skip
        dialog.saw("call_centre", f"agent sees journey, step, next contact: {where}")
        for channel in ("email", "sms"):
            step = _until(lambda ch=channel, i=iid: _step(settings, i, ch), 30)
            msg = _message(client, cid, channel) if step and step["result"] == "sent" else None
            if msg is None:
                why = f"{step['result']}: {step['detail']}" if step else "not reached"
                dialog.saw(channel, f"no message ({why})")
                continue
            dialog.saw(channel, f"message {msg['offer_id']} claimed by the sender")
            receipt = {"idempotency_key": f"demo:delivered:{msg['decision_id']}",
                       "decision_id": msg["decision_id"], "type": "delivered"}  # fmt: skip
            client.post("/outcome", json=receipt).raise_for_status()
            dialog.saw(channel, "delivered; not " + ("opened" if channel == "email" else "clicked"))
        bought = _event(client, channel="store", event_type="purchase", login_id=login,
                        product_id=PRODUCT, value=10.0)  # fmt: skip
        dialog.saw("store", f"bought {PRODUCT}: journeys ended {bought.get('journeys_ended', 0)}")
        console.print(dialog.table(cid))
        steps = _step_log(settings, iid)
        status = (_instance(settings, cid) or {}).get("status")
        console.print(
            "the journey's own log: "
            + ", ".join(f"{s['step_id']}={s['result']}" for s in steps)
            + f"; status now {status}"
        )
        return {"journey_customer": cid, "journey_steps": len(steps), "journey_status": status,
                "held_out_tried": held_out}  # fmt: skip
    console.print("no customer who consents to e-mail and SMS entered the journey's treatment arm")
    return {"journey_customer": None, "held_out_tried": held_out}


def journey_lifts(settings: Settings, console: Console) -> dict[str, Any]:
    """Every shipped journey on the demo's world: the measured lift in its goal over its
    holdout, with its 95% interval, beside the truth's."""
    from benchmarks.journey_coverage import lift_table, simulated_lifts
    from journeys.load import load_journeys, shipped_examples

    lifts = simulated_lifts(
        settings.customers, settings.days, settings.seed, load_journeys(shipped_examples())
    )
    console.print(lift_table(lifts, "journeys on the simulated world: goal lift over the holdout"))
    basket = lifts.get(JOURNEY)
    if basket is not None and basket.measured_lift is not None:
        console.print(
            f"{JOURNEY}: 30-day comeback {100 * basket.measured_lift:+.1f} points over its "
            f"holdout (95% interval {100 * basket.ci_low:+.1f} to {100 * basket.ci_high:+.1f}); "
            f"the truth: {100 * basket.true_lift:+.1f} points"
        )
    return {name: x.model_dump() for name, x in lifts.items()}

"""How the world's customers answer a journey's messages: delivery, opens, clicks, fatigue and
the causal effect of each contact on the journey's goal, as vectorised numpy formulas.

One message moves through stages: sent -> delivered -> opened -> clicked. For channels with no
open signal, "opened" is the person taking the message in (an SMS read, a banner noticed, a
call that turns into a conversation) and "clicked" is acting on it (a link followed, an offer
accepted on the phone). The stage it reaches decides its effect on the goal, a shift on the
logit of the customer's *untreated* goal probability (``simulator.goals``):

    shift = RELEVANCE[trigger] * STAGE_EFFECT[channel][stage] / (1 + FATIGUE * load)
            - AVERSION_WEIGHT * aversion**AVERSION_POWER * INTRUSION[channel] * (1 + load)

``load`` is the person's recent contacts in this dialog (each weighs exp(-age / 7 days)), so
each further contact in a week adds less, and for the contact-averse (about one in seven people
has ``contact_aversion`` > 0.6) the penalty outgrows the gain: their goal probability goes
down with every contact. How a shift turns into a conversion over time, with exits and waits,
is ``simulator.journey_sim``'s business; both it and the live responder (:func:`respond`) draw
from the formulas here, so the truth is the data-generating process itself.

Where the figures come from. Delivery: typical e-mail deliverability ~97% and SMS ~98%
(industry benchmarks); a call-centre list reaches about a third of those it dials. Opens and
clicks: the formula the world's past campaigns already use (``simulator.campaigns``: e-mail
open 0.15 + 0.35 * tech * (1 - aversion / 2), ~30% on average; click-to-open ~15%). Effects:
calibrated (``tests/simulator/test_dialog.py``) to what this product's users report (issue
13): calendar and segmented campaigns lift the goal by under a point, act-on-intent dialogs
5-10 times more, and the abandoned-basket dialog raises the 21% no-contact comeback by roughly
3-7 points.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simulator.clock import US_PER_DAY, US_PER_SECOND, to_timestamp, to_us
from simulator.response import INTRUSION

HOUR_US = 3600 * US_PER_SECOND
MINUTE_US = 60 * US_PER_SECOND

# Stages a message reaches (an undelivered message has no effect and is no contact).
NOT_DELIVERED, DELIVERED, OPENED, CLICKED = 0, 1, 2, 3

# --- delivery -------------------------------------------------------------------------------
# P(delivered | sent) for pushed channels: e-mail and SMS deliverability benchmarks (~97%,
# ~98%); paid media: the share of an audience served an impression during the flight.
DELIVERED_P = {"email": 0.97, "sms": 0.98, "paid_media": 0.55}
# A call-centre call list reaches ~35% of those it dials; the contact-averse answer less.
CALL_REACH = 0.42
CALL_REACH_AVERSION = 0.6  # reach falls by this share at aversion 1
# Banners (web, app) and the store clerk's prompt are delivered on the customer's next visit,
# if it comes within BANNER_TTL; visit rates per day mirror simulator.events (sessions: web
# 0.04 + 0.22 * tech, app 0.05 + 0.35 * tech for app users; store visits 0.008 + 0.012 *
# (1 - tech)). Without the app, an app message is never delivered.
BANNER_TTL_US = 3 * US_PER_DAY
VISIT_RATE = {
    "web": (0.04, 0.22),
    "app": (0.05, 0.35),
    "store": (0.02, -0.012),
}
VISIT_CHANNELS = ("web", "app", "store")

# --- opens and clicks -----------------------------------------------------------------------
# P(opened | delivered) = base + tech_weight * tech, times (1 - aversion_weight * aversion);
# P(clicked | opened) likewise. E-mail: simulator.campaigns' formula; SMS: nearly all are read,
# few clicked; a reached call is mostly a conversation and a quarter accept; banners and
# paid media are glanced at and seldom clicked.
OPEN = {
    "email": (0.15, 0.35, 0.5),
    "sms": (0.85, 0.1, 0.3),
    "call_centre": (0.8, 0.0, 0.3),
    "paid_media": (0.2, 0.2, 0.3),
    "web": (0.5, 0.2, 0.2),
    "app": (0.55, 0.2, 0.2),
    "store": (0.85, 0.0, 0.2),
}
CLICK = {
    "email": (0.08, 0.2, 0.5),
    "sms": (0.06, 0.12, 0.5),
    "call_centre": (0.25, 0.0, 0.5),
    "paid_media": (0.01, 0.03, 0.5),
    "web": (0.04, 0.08, 0.5),
    "app": (0.05, 0.1, 0.5),
    "store": (0.2, 0.0, 0.5),
}
# Mean delay from delivery to open (exponential; a wait_for of 24h catches ~95% of e-mail
# opens), and from open to click.
OPEN_DELAY_US = {"email": 8 * HOUR_US, "sms": HOUR_US // 2}
CLICK_DELAY_US = 2 * MINUTE_US

# --- effect on the goal ---------------------------------------------------------------------
# Logit shift of a message reaching each stage, for an act-on-intent dialog (relevance 1).
STAGE_EFFECT = {
    "email": (0.0, 0.07, 0.45, 1.2),
    "sms": (0.0, 0.07, 0.3, 1.0),
    "call_centre": (0.0, 0.2, 0.6, 1.5),
    "paid_media": (0.0, 0.02, 0.1, 0.6),
    "web": (0.0, 0.05, 0.25, 1.0),
    "app": (0.0, 0.05, 0.3, 1.0),
    "store": (0.0, 0.1, 0.5, 1.2),
}
# How much a message matters given why the customer entered: a reminder of the basket they
# just left (intent) far more than a date on the calendar. Users report act-on-intent dialogs
# lift 5-10x more than calendar campaigns (issue 13); behavioural and predictive triggers sit
# between (a real change in the customer, but no stated intent).
RELEVANCE = {
    "intent": 1.0,
    "behavioural": 0.45,
    "predictive": 0.45,
    "lifecycle": 0.25,
    "calendar": 0.2,
}
FATIGUE = 0.6  # the k-th contact in a week gains 1 / (1 + FATIGUE * (k - 1))
FATIGUE_DAYS = 7.0  # a contact's weight in the load decays as exp(-age / FATIGUE_DAYS)
# The contact-averse lose AVERSION_WEIGHT * aversion^AVERSION_POWER * INTRUSION (simulator.
# response: e-mail 0.45, SMS 0.8, call 1.0) per contact, more with every further one. The high
# power keeps the loss on the averse few (aversion ~0.75: -0.08 per e-mail, -0.13 per SMS,
# outweighing a calendar message's gain), not a tax on everyone's small gains.
AVERSION_WEIGHT = 0.5
AVERSION_POWER = 4
# Mean days from the contact that tipped a customer over to the goal, by stage: a click buys
# within hours, an unopened reminder works over days.
PROMPT_DELAY_DAYS = (0.0, 3.0, 1.0, 0.2)


def _channel_check(channel: str, table: dict) -> None:
    if channel not in table:
        raise ValueError(f"channel {channel!r}: no response model (known: {', '.join(table)})")


def visit_rate(channel: str, tech: np.ndarray, has_app: np.ndarray) -> np.ndarray:
    """Visits per day on a banner channel (web, app, store)."""
    _channel_check(channel, VISIT_RATE)
    base, slope = VISIT_RATE[channel]
    rate = base + slope * np.asarray(tech, dtype=float)
    return rate * np.asarray(has_app, dtype=bool) if channel == "app" else rate


def delivery_probs(
    channel: str, tech: np.ndarray, aversion: np.ndarray, has_app: np.ndarray
) -> np.ndarray:
    """P(delivered | sent) per person; banners: P(a visit within BANNER_TTL)."""
    n = len(np.asarray(tech))
    if channel in VISIT_CHANNELS:
        days = BANNER_TTL_US / US_PER_DAY
        return 1 - np.exp(-visit_rate(channel, tech, has_app) * days)
    if channel == "call_centre":
        return CALL_REACH * (1 - CALL_REACH_AVERSION * np.asarray(aversion, dtype=float))
    _channel_check(channel, DELIVERED_P)
    return np.full(n, DELIVERED_P[channel])


def _stage_prob(table: dict, channel: str, tech: np.ndarray, aversion: np.ndarray) -> np.ndarray:
    _channel_check(channel, table)
    base, t_w, a_w = table[channel]
    p = (base + t_w * np.asarray(tech, dtype=float)) * (1 - a_w * np.asarray(aversion, float))
    return np.clip(p, 0.0, 1.0)


def open_probs(channel: str, tech: np.ndarray, aversion: np.ndarray) -> np.ndarray:
    """P(opened | delivered) per person."""
    return _stage_prob(OPEN, channel, tech, aversion)


def click_probs(channel: str, tech: np.ndarray, aversion: np.ndarray) -> np.ndarray:
    """P(clicked | opened) per person."""
    return _stage_prob(CLICK, channel, tech, aversion)


def fatigue(load: np.ndarray) -> np.ndarray:
    """The share of a contact's gain left after ``load`` recent contacts."""
    return 1.0 / (1.0 + FATIGUE * np.asarray(load, dtype=float))


def decay_load(load: np.ndarray, since_us: np.ndarray) -> np.ndarray:
    """A contact load ``since_us`` microseconds later."""
    return np.asarray(load, float) * np.exp(
        -np.asarray(since_us, float) / (FATIGUE_DAYS * US_PER_DAY)
    )


def goal_shift(
    channel: str,
    stage: np.ndarray,
    trigger: str,
    aversion: np.ndarray,
    load: np.ndarray,
) -> np.ndarray:
    """The logit shift on the goal of a message reaching ``stage`` (0 when not delivered)."""
    _channel_check(channel, STAGE_EFFECT)
    if trigger not in RELEVANCE:
        raise ValueError(f"trigger {trigger!r}: no relevance (known: {', '.join(RELEVANCE)})")
    stage = np.asarray(stage, dtype=np.int64)
    gain = RELEVANCE[trigger] * np.asarray(STAGE_EFFECT[channel])[stage] * fatigue(load)
    a = np.asarray(aversion, dtype=float)
    loss = (
        AVERSION_WEIGHT
        * a**AVERSION_POWER
        * INTRUSION[channel]
        * (1.0 + np.asarray(load, dtype=float))
    )
    return np.where(stage >= DELIVERED, gain - loss, 0.0)


def stage_probs(
    channel: str, tech: np.ndarray, aversion: np.ndarray, has_app: np.ndarray
) -> np.ndarray:
    """(rows x 4) P(the message ends at each stage | sent)."""
    d = delivery_probs(channel, tech, aversion, has_app)
    o = open_probs(channel, tech, aversion)
    c = click_probs(channel, tech, aversion)
    return np.stack([1 - d, d * (1 - o), d * o * (1 - c), d * o * c], axis=1)


def expected_shift(
    channel: str,
    trigger: str,
    tech: np.ndarray,
    aversion: np.ndarray,
    has_app: np.ndarray,
    load: np.ndarray,
) -> np.ndarray:
    """E[logit shift | sent]: what ``best_channel`` ranks channels by."""
    probs = stage_probs(channel, tech, aversion, has_app)
    n = len(probs)
    shifts = np.stack(
        [goal_shift(channel, np.full(n, s), trigger, aversion, load) for s in range(4)], axis=1
    )
    return (probs * shifts).sum(axis=1)


def draw_stages(
    rng: np.random.Generator,
    channel: str,
    tech: np.ndarray,
    aversion: np.ndarray,
    has_app: np.ndarray,
    sent_at: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw (stage, delivered_at, opened_at, clicked_at) of messages sent at ``sent_at``;
    times are -1 where the stage was not reached. A banner is delivered at the next visit."""
    n = len(sent_at)
    sent_at = np.asarray(sent_at, dtype=np.int64)
    if channel in VISIT_CHANNELS:
        rate = visit_rate(channel, tech, has_app)
        wait = rng.exponential(1.0, n) / np.maximum(rate, 1e-12) * US_PER_DAY
        delivered = (rate > 0) & (wait <= BANNER_TTL_US)
        at = sent_at + np.where(delivered, wait, 0).astype(np.int64)
    else:
        delivered = rng.random(n) < delivery_probs(channel, tech, aversion, has_app)
        at = sent_at.copy()
    opened = delivered & (rng.random(n) < open_probs(channel, tech, aversion))
    clicked = opened & (rng.random(n) < click_probs(channel, tech, aversion))
    mean = OPEN_DELAY_US.get(channel, 0)
    open_at = at + (rng.exponential(1.0, n) * mean).astype(np.int64)
    stage = delivered.astype(np.int64) + opened + clicked
    return (
        stage,
        np.where(delivered, at, -1),
        np.where(opened, open_at, -1),
        np.where(clicked, open_at + CLICK_DELAY_US, -1),
    )


def prompt_delay(rng: np.random.Generator, stage: np.ndarray) -> np.ndarray:
    """Microseconds from the contact to the goal it prompted."""
    mean = np.asarray(PROMPT_DELAY_DAYS)[np.asarray(stage, dtype=np.int64)]
    return (rng.exponential(1.0, len(mean)) * mean * US_PER_DAY).astype(np.int64)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


# --- the live responder ---------------------------------------------------------------------
DEFAULT_LIVE_P = 0.21  # the abandoned basket's no-contact comeback, when a message has no p
OPEN_EVENT = {"email": "email_open"}
CLICK_EVENT = {"email": "email_click", "sms": "sms_click"}
RESPONSE_COLUMNS = (
    "decision_id",
    "person_id",
    "channel",
    "ts",
    "event_type",
    "outcome",
    "email",
    "phone",
    "product_id",
)


def respond(world: object, messages: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """What the customers do with real outbox messages, as events for the service.

    ``messages``: ``person_id`` (the true person), ``channel``, ``decision_id``, ``ts``;
    optional ``p_untreated`` (the goal's untreated probability, default DEFAULT_LIVE_P),
    ``trigger`` (default ``intent``), ``contacts`` (earlier contacts this week, default 0) and
    ``product_id`` (the goal's product). Returns one row per event: ``event_type`` is
    ``delivered`` (a sender's receipt: POST /outcome type ``delivered``), ``email_open``,
    ``email_click``, ``sms_click`` (POST /events; clicks also as /outcome ``click``) or
    ``purchase`` (the goal, when the message tipped the customer: /events and /outcome
    ``conversion``); ``outcome`` names the /outcome type, if any. The goal is drawn as the
    share the message adds over the untreated chance (organic purchases are the world's)."""
    people = world.people.set_index("person_id")  # type: ignore[attr-defined]
    missing = set(messages["person_id"]) - set(people.index)
    if missing:
        raise ValueError(f"person_id: unknown person {sorted(missing)[0]!r}")
    ids = _addresses(world.identities)  # type: ignore[attr-defined]
    rows: list[pd.DataFrame] = []
    for channel, part in messages.groupby("channel", sort=True):
        n = len(part)
        who = people.loc[part["person_id"]]
        tech = who["tech_affinity"].to_numpy()
        averse = who["contact_aversion"].to_numpy()
        has_app = who["has_app"].to_numpy()
        at = np.asarray(to_us(part["ts"]), dtype=np.int64)
        stage, d_at, o_at, c_at = draw_stages(rng, str(channel), tech, averse, has_app, at)
        p0 = _col(part, "p_untreated", DEFAULT_LIVE_P).astype(float)
        load = _col(part, "contacts", 0).astype(float)
        trig = _col(part, "trigger", "intent")
        shift = np.zeros(n)
        for t in np.unique(trig):
            m = trig == t
            shift[m] = goal_shift(str(channel), stage[m], str(t), averse[m], load[m])
        lifted = np.maximum(sigmoid(logit(p0) + shift) - p0, 0.0) / np.maximum(1 - p0, 1e-12)
        buys = (stage >= DELIVERED) & (rng.random(n) < lifted)
        eff = np.where(c_at >= 0, c_at, np.where(o_at >= 0, o_at, d_at))
        buy_at = eff + prompt_delay(rng, stage)
        base = {
            "decision_id": part["decision_id"].to_numpy(),
            "person_id": part["person_id"].to_numpy(),
            "channel": channel,
            "email": ids["email"].reindex(part["person_id"]).to_numpy(),
            "phone": ids["phone"].reindex(part["person_id"]).to_numpy(),
            "product_id": _col(part, "product_id", None),
        }
        for etype, when, outcome in (
            ("delivered", d_at, "delivered"),
            (OPEN_EVENT.get(str(channel)), o_at, None),
            (CLICK_EVENT.get(str(channel), "click"), c_at, "click"),
            ("purchase", np.where(buys, buy_at, -1), "conversion"),
        ):
            m = when >= 0
            if etype is None or not m.any():
                continue
            frame = pd.DataFrame(
                {k: (v[m] if isinstance(v, np.ndarray) else v) for k, v in base.items()}
            )
            frame["ts"] = to_timestamp(when[m]).to_numpy()
            frame["event_type"] = etype
            frame["outcome"] = outcome
            rows.append(frame)
    if not rows:
        return pd.DataFrame(columns=list(RESPONSE_COLUMNS))
    out = pd.concat(rows, ignore_index=True)[list(RESPONSE_COLUMNS)]
    return out.sort_values(["ts", "decision_id", "event_type"], kind="stable").reset_index(
        drop=True
    )


def _col(frame: pd.DataFrame, name: str, default: object) -> np.ndarray:
    if name in frame.columns:
        return frame[name].to_numpy()
    return np.full(
        len(frame), default, dtype=object if not isinstance(default, int | float) else float
    )


def _addresses(identities: pd.DataFrame) -> dict[str, pd.Series]:
    """Each person's e-mail and phone as the CRM holds them (else any source's)."""
    order = identities.assign(crm=identities["source"] != "crm").sort_values("crm", kind="stable")
    return {
        c: order.dropna(subset=[c]).drop_duplicates("true_person_id").set_index("true_person_id")[c]
        for c in ("email", "phone")
    }

"""Journeys run on a simulated world: who enters, what each treated customer is sent and does,
whether each entrant reaches the goal, and each journey's true incremental effect.

Each entrant has an untreated goal probability p0 (``simulator.goals``) and a uniform draw U;
untreated, the goal happens iff U < p0, at a time drawn as the world would (a basket comes back
after ~5 days). Treated, the dialog runs over simulated time: waits, quiet hours (a message due
in them goes out when they end, local time of ``rules.timezone``), ``wait_for`` (an open or
click of the awaited message within the timeout takes ``on_event``), splits on profile fields
and the churn score, random splits, consent at send time (a message on a channel the person
does not consent to is skipped), and exits: the goal (when it ends the dialog) or another exit
event (a purchase of something else, at the person's organic rate) ends it at once, so nothing
more is sent. Each delivered message shifts the goal's logit (``simulator.dialog``); when the
level p = sigmoid(logit p0 + shifts) passes U the customer converts soon after that contact,
and when a contact pushes it below U a pending conversion is lost (the contact-averse). So one
U couples each entrant's treated and untreated outcome, and the dialog can only move the goal
through what it actually delivered before the customer bought or left.

The truth of a journey is mean over all entrants of p_treated - p_untreated. p_untreated is
exact; p_treated is the expectation over the dialog's random paths, estimated by Monte Carlo:
the whole dialog is re-run for every entrant ``replicates`` times (about TRUTH_DRAWS draws
per journey) and the mean of (treated outcome - untreated outcome) on the same U is taken,
whose standard error is reported beside the truth (``JourneyRun.truth_se``: ~0.05 points on
the default world, against a measured lift's ~2-5 point interval).
"""

from __future__ import annotations

import time as clock
import zlib
from dataclasses import dataclass, field
from datetime import time
from typing import Any

import numpy as np
import pandas as pd

from journeys.definition import (
    BANNER_CHANNELS,
    OUTBOUND_CHANNELS,
    ExitStep,
    Journey,
    MessageStep,
    QuietHours,
    RandomSplitStep,
    SplitStep,
    WaitForStep,
    WaitStep,
)
from simulator.clock import START_US, US_PER_DAY, to_timestamp, to_us
from simulator.dialog import (
    DELIVERED,
    decay_load,
    draw_stages,
    expected_shift,
    goal_shift,
    logit,
    prompt_delay,
    sigmoid,
)
from simulator.goals import (
    Unsupported,
    WorldView,
    baseline,
    condition_mask,
    goal_ends_dialog,
    other_exit_events,
)
from simulator.journey_entrants import world_entries

TRUTH_DRAWS = 400_000  # treated re-runs per journey for its truth (entrants x replicates)
MIN_REPLICATES = 20
MAX_ITERATIONS = 10_000  # passes over the steps; every cycle waits, so time runs out first
NEVER = np.iinfo(np.int64).max // 4
BEST_CHANNEL_OPTIONS = (*OUTBOUND_CHANNELS, *BANNER_CHANNELS)
UNIT_COLUMNS = ("journey", "version", "instance_id", "customer_id", "arm", "path",
                "entered_at", "converted", "goal_at")  # fmt: skip
STEP_COLUMNS = ("instance_id", "journey", "step_id", "channel", "sent", "delivered", "opened",
                "clicked", "sent_at")  # fmt: skip
WAITABLE = ("email_open", "email_click", "sms_click", "purchase", "checkout", "contract_renewal",
            "store_visit", "session_start", "complaint", "churn")  # fmt: skip


@dataclass
class JourneyRun:
    """``units``: one row per entered instance (both arms); ``steps``: one row per treated
    message step reached (``sent`` False where consent or a channel was missing); ``truth``:
    each journey's true lift on its goal rate over all entrants, ``truth_se`` its Monte Carlo
    standard error; ``summary``: per journey n, holdout/treated rates, truth, replicates."""

    units: pd.DataFrame
    steps: pd.DataFrame
    truth: dict[str, float]
    truth_se: dict[str, float] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def simulate_journeys(
    world: Any,
    journeys: list[Journey],
    seed: int,
    holdout_share: float | None = None,
    entries: dict[str, pd.DataFrame] | None = None,
    replicates: int | None = None,
) -> JourneyRun:
    """Run each journey over the world's history; deterministic for a seed.

    ``holdout_share`` overrides every journey's ``rules.holdout_share``; ``entries`` (journey
    name -> person, entered_at (us), product_id) overrides who enters; ``replicates`` the truth's
    re-runs per entrant (default: TRUTH_DRAWS / entrants, at least MIN_REPLICATES)."""
    if holdout_share is not None and not 0 <= holdout_share < 1:
        raise ValueError(f"holdout_share: must be in [0, 1), got {holdout_share}")
    names = [j.name for j in journeys]
    if len(set(names)) != len(names):
        raise ValueError(
            f"journeys: duplicate name {next(n for n in names if names.count(n) > 1)!r}"
        )
    view = WorldView.of(world)
    start = int(to_us(pd.Timestamp(world.meta["start"]))) if "start" in world.meta else START_US
    end = int(to_us(pd.Timestamp(world.meta["end"])))
    units, steps, truth, se, summary = [], [], {}, {}, {}
    for j in journeys:
        t0 = clock.perf_counter()
        check(j)
        found = entries.get(j.name) if entries else None
        e = find_entries(view, j, start, end) if found is None else found
        share = j.rules.holdout_share if holdout_share is None else holdout_share
        u, s, tr, tr_se, reps, u_true = _run_journey(view, j, e, seed, share, replicates)
        units += [u] if len(u) else []
        steps += [s] if len(s) else []
        truth[j.name], se[j.name] = tr, tr_se
        hold, treat = u[u.arm == "holdout"], u[u.arm == "treatment"]
        summary[j.name] = {
            "entrants": len(u),
            "n_treated": len(treat),
            "n_holdout": len(hold),
            "holdout_rate": float(hold.converted.mean()) if len(hold) else float("nan"),
            "treated_rate": float(treat.converted.mean()) if len(treat) else float("nan"),
            "untreated_rate_true": u_true,
            "treated_rate_true": u_true + tr,
            "true_lift": tr,
            "true_lift_se": tr_se,
            "replicates": reps,
            "seconds": round(clock.perf_counter() - t0, 3),
        }
    return JourneyRun(
        pd.concat(units, ignore_index=True) if units else _empty(UNIT_COLUMNS),
        pd.concat(steps, ignore_index=True) if steps else _empty(STEP_COLUMNS),
        truth,
        se,
        summary,
    )


def find_entries(view: WorldView, journey: Journey, start: int, end: int) -> pd.DataFrame:
    """Who enters when. Stand-in until ``journeys.triggers.entries`` lands (h-triggers)."""
    return world_entries(view, journey, start, end)


def check(journey: Journey) -> None:
    """Refuse, naming the step and field, what the simulator cannot run."""
    for k, s in enumerate(journey.steps):
        where = f"journey {journey.name}: steps[{k}] ({s.id})"
        if isinstance(s, WaitForStep) and s.event not in WAITABLE:
            raise Unsupported(
                f"{where}.event: cannot simulate waiting for {s.event!r} "
                f"(known: {', '.join(WAITABLE)})"
            )
    try:
        other_exit_events(journey)
    except Unsupported as err:
        raise Unsupported(f"journey {journey.name}: {err}") from None


def _empty(cols: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})


def _rngs(seed: int, name: str) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
    return [np.random.default_rng(s) for s in ss.spawn(3)]


def _run_journey(
    view: WorldView,
    journey: Journey,
    entries: pd.DataFrame,
    seed: int,
    share: float,
    replicates: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame, float, float, int, float]:
    arms_rng, real_rng, truth_rng = _rngs(seed, journey.name)
    person = entries["person"].to_numpy(dtype=np.int64)
    t0 = entries["entered_at"].to_numpy(dtype=np.int64)
    product = entries["product_id"].to_numpy(dtype=object)
    n = len(person)
    # sticky per customer: one draw per person decides every instance's arm
    held = (arms_rng.random(len(view.people)) < share)[person]
    real = _Dialog(view, journey, real_rng, person, t0, product, ~held, record=True)
    real.run()
    ids = np.array([f"{journey.name}-{i:06d}" for i in range(n)], dtype=object)
    converted = real.conv <= real.wend
    names = np.array([None] + real.path_names, dtype=object)
    units = pd.DataFrame(
        {
            "journey": journey.name,
            "version": journey.version,
            "instance_id": ids,
            "customer_id": view.index.to_numpy()[person],
            "arm": np.where(held, "holdout", "treatment"),
            "path": names[real.path + 1],
            "entered_at": to_timestamp(t0).to_numpy(),
            "converted": converted,
            "goal_at": to_timestamp(np.where(converted, real.conv, -1)).to_numpy(),
        }
    )
    steps = real.step_frame(ids)
    if n == 0:
        return units, steps, 0.0, 0.0, 0, float("nan")
    reps = replicates or max(MIN_REPLICATES, -(-TRUTH_DRAWS // n))
    rep = np.tile(np.arange(n), reps)
    sim = _Dialog(
        view, journey, truth_rng, person[rep], t0[rep], product[rep], np.ones(n * reps, bool)
    )
    sim.run()
    diff = (sim.conv <= sim.wend).astype(float) - sim.untreated
    se = float(diff.std() / np.sqrt(len(diff)))
    return units, steps, float(diff.mean()), se, reps, float(real.p0.mean())


class _Dialog:
    """Many instances of one journey, stepped together over simulated time."""

    def __init__(
        self,
        view: WorldView,
        journey: Journey,
        rng: np.random.Generator,
        person: np.ndarray,
        t0: np.ndarray,
        product: np.ndarray,
        treated: np.ndarray,
        record: bool = False,
    ) -> None:
        self.view, self.j, self.rng, self.record = view, journey, rng, record
        self.person, self.t0 = person, t0
        m = len(person)
        self.trigger = journey.entry.type
        self.tech = view.col("tech_affinity", person)
        self.averse = view.col("contact_aversion", person)
        self.has_app = view.col("has_app", person).astype(bool)
        base = baseline(view, journey, person, t0, product)
        self.u = rng.random(m)
        self.p0 = base.p
        self.untreated = (self.u < base.p).astype(float)
        self.conv = np.where(self.u < base.p, base.draw_times(rng, t0), NEVER)
        self.level = logit(base.p)
        self.wend = t0 + int(journey.goal.within.total_seconds() * 1e6)
        self.stop_on_goal = goal_ends_dialog(journey)
        self._other: dict[str, np.ndarray] = {}
        self.exit_at = np.full(m, NEVER)
        for ev in other_exit_events(journey):
            self.exit_at = np.minimum(self.exit_at, self.other(ev))
        self.t = t0.copy()
        self.ids = [s.id for s in journey.steps]
        self.cur = np.where(treated, 0, -1)
        self.load = np.zeros(m)
        self.load_t = t0.copy()
        self.path = np.full(m, -1)
        self.path_names: list[str] = []
        self.opened: dict[str, np.ndarray] = {}
        self.clicked: dict[str, np.ndarray] = {}
        self.rows: list[dict[str, np.ndarray]] = []

    # --- helpers --------------------------------------------------------------------------
    def other(self, event: str) -> np.ndarray:
        """When the customer would next do ``event`` anyway (drawn once per instance)."""
        if event not in self._other:
            rate = self.view.event_rate(event, self.person, self.t0)
            wait = self.rng.exponential(1.0, len(self.person)) / np.maximum(rate, 1e-12)
            self._other[event] = self.t0 + np.minimum(wait * US_PER_DAY, NEVER / 2).astype(np.int64)
        return self._other[event]

    def stop_at(self, m: np.ndarray) -> np.ndarray:
        """When each instance's dialog ends by itself (goal, exit event, window end)."""
        goal = self.conv[m] if self.stop_on_goal else np.full(len(m), NEVER)
        return np.minimum(np.minimum(goal, self.exit_at[m]), self.wend[m])

    def goto(self, m: np.ndarray, nxt: str | None | np.ndarray) -> None:
        if isinstance(nxt, np.ndarray):
            self.cur[m] = nxt
        else:
            self.cur[m] = -1 if nxt is None else self.ids.index(nxt)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        for _ in range(MAX_ITERATIONS):
            live = self.cur >= 0
            if not live.any():
                return
            for k, step in enumerate(self.j.steps):
                m = np.flatnonzero(self.cur == k)
                if not len(m):
                    continue
                over = self.stop_at(m) <= self.t[m]
                self.cur[m[over]] = -1
                m = m[~over]
                if len(m):
                    self.step(step, m)
        raise RuntimeError(
            f"journey {self.j.name}: instances still running after {MAX_ITERATIONS} passes"
        )

    def step(self, s: Any, m: np.ndarray) -> None:
        if isinstance(s, MessageStep):
            self.message(s, m)
        elif isinstance(s, WaitStep):
            if s.duration is not None:
                self.t[m] += int(s.duration.total_seconds() * 1e6)
            else:
                self.t[m] = _next_local(self.t[m], s.until, self.j.rules.zone())
            self.goto(m, s.next)
        elif isinstance(s, WaitForStep):
            self.wait_for(s, m)
        elif isinstance(s, SplitStep):
            left = m
            for b in s.branches:
                hit = condition_mask(self.view, list(b.when), self.person[left], self.t[left])
                self.goto(left[hit], b.next)
                left = left[~hit]
            self.goto(left, s.otherwise)
        elif isinstance(s, RandomSplitStep):
            edges = np.cumsum([b.share for b in s.branches])
            pick = np.minimum(
                np.searchsorted(edges, self.rng.random(len(m)), side="right"), len(edges) - 1
            )
            codes = []
            for b in s.branches:
                if b.name not in self.path_names:
                    self.path_names.append(b.name)
                codes.append(self.path_names.index(b.name))
            first = self.path[m] < 0
            self.path[m[first]] = np.asarray(codes)[pick[first]]
            self.goto(m, np.asarray([self.ids.index(b.next) for b in s.branches])[pick])
        elif isinstance(s, ExitStep):
            self.cur[m] = -1
        else:  # pragma: no cover - the definition's union is closed
            raise Unsupported(f"step {s.id}: type {s.type!r} is not simulated")

    def wait_for(self, s: WaitForStep, m: np.ndarray) -> None:
        ev = s.event
        if ev in ("email_open", "email_click", "sms_click"):
            table = self.opened if ev == "email_open" else self.clicked
            key = s.of or ("email" if ev.startswith("email") else "sms")
            at = table.get(key, np.full(len(self.person), -1))[m]
            at = np.where(at < 0, NEVER, at)
        elif ev in ("purchase", "checkout"):
            at = np.minimum(self.conv[m], self.other("purchase")[m])
        elif ev == self.j.goal.event:
            at = self.conv[m]
        else:
            at = self.other(ev)[m]
        timeout = int(s.timeout.total_seconds() * 1e6)
        hit = at <= self.t[m] + timeout
        self.t[m] = np.where(hit, np.maximum(at, self.t[m]), self.t[m] + timeout)
        self.goto(m[hit], s.on_event)
        self.goto(m[~hit], s.on_timeout)

    def message(self, s: MessageStep, m: np.ndarray) -> None:
        if s.channel == "best_channel":
            chosen = self.best_channel(s, m)
        else:
            chosen = np.full(len(m), s.channel, dtype=object)
        for ch in np.unique(chosen):
            g = m[chosen == ch]
            if ch is None or ch == "":
                self.log(s, g, "best_channel", np.zeros((len(g), 3), bool), self.t[g], sent=False)
                continue
            self.send(s, g, str(ch))
        self.goto(m[self.cur[m] >= 0], s.next)

    def best_channel(self, s: MessageStep, m: np.ndarray) -> np.ndarray:
        """The consented channel with the most expected shift now (None: no channel)."""
        options = list(s.channels) or list(BEST_CHANNEL_OPTIONS)
        best = np.full(len(m), -np.inf)
        out = np.full(len(m), "", dtype=object)
        load = decay_load(self.load[m], self.t[m] - self.load_t[m])
        for ch in options:
            value = expected_shift(
                ch, self.trigger, self.tech[m], self.averse[m], self.has_app[m], load
            )
            ok = self.view.consent(ch, self.person[m], self.t[m])
            if ch == "app":
                ok &= self.has_app[m]
            better = ok & (value > best)
            best[better], out[better] = value[better], ch
        return out

    def send(self, s: MessageStep, g: np.ndarray, ch: str) -> None:
        """One message on ``ch`` to instances ``g`` (quiet hours, consent, response, effect)."""
        at = _out_of_quiet(self.t[g], self.j.rules.quiet_hours.get(ch), self.j.rules.zone())
        stop = self.stop_at(g)
        gone = stop <= at  # ended while the message waited for quiet hours to pass
        self.cur[g[gone]] = -1
        g, at, stop = g[~gone], at[~gone], stop[~gone]
        self.t[g] = at
        ok = self.view.consent(ch, self.person[g], at)
        no = g[~ok]
        self.log(s, no, ch, np.zeros((len(no), 3), bool), at[~ok], sent=False)
        g, at, stop = g[ok], at[ok], stop[ok]
        stage, d_at, o_at, c_at = draw_stages(
            self.rng, ch, self.tech[g], self.averse[g], self.has_app[g], at
        )
        late = (stage >= DELIVERED) & (d_at >= stop)  # a banner withdrawn before the visit
        stage = np.where(late, 0, stage)
        d_at, o_at, c_at = (np.where(late | (x < 0), -1, x) for x in (d_at, o_at, c_at))
        o_at, c_at = np.where(stage >= 2, o_at, -1), np.where(stage >= 3, c_at, -1)
        got = stage >= DELIVERED
        e = np.where(c_at >= 0, c_at, np.where(o_at >= 0, o_at, d_at))
        load = decay_load(self.load[g], np.maximum(e - self.load_t[g], 0))
        shift = goal_shift(ch, stage, self.trigger, self.averse[g], load)
        still = got & (self.conv[g] > e)
        self.level[g] += np.where(still, shift, 0.0)
        above = self.u[g] < sigmoid(self.level[g])
        prompted = np.minimum(self.conv[g], e + prompt_delay(self.rng, stage))
        self.conv[g] = np.where(still & above, prompted, np.where(still, NEVER, self.conv[g]))
        self.load[g] = np.where(got, load + 1, self.load[g])
        self.load_t[g] = np.where(got, np.maximum(e, self.load_t[g]), self.load_t[g])
        for table, when in ((self.opened, o_at), (self.clicked, c_at)):
            for key in (s.id, ch):
                table.setdefault(key, np.full(len(self.person), -1))[g] = when
        flags = np.stack([got, stage >= 2, stage >= 3], axis=1)
        self.log(s, g, ch, flags, at, sent=True)

    def log(
        self, s: MessageStep, g: np.ndarray, ch: str, flags: np.ndarray, at: np.ndarray, sent: bool
    ) -> None:
        if self.record and len(g):
            self.rows.append(
                {
                    "idx": g,
                    "step_id": np.full(len(g), s.id, dtype=object),
                    "channel": np.full(len(g), ch, dtype=object),
                    "sent": np.full(len(g), sent),
                    "delivered": flags[:, 0],
                    "opened": flags[:, 1],
                    "clicked": flags[:, 2],
                    "sent_at": np.asarray(at, dtype=np.int64),
                }
            )

    def step_frame(self, ids: np.ndarray) -> pd.DataFrame:
        if not self.rows:
            return _empty(STEP_COLUMNS)
        cat = {k: np.concatenate([r[k] for r in self.rows]) for k in self.rows[0]}
        order = np.lexsort((cat["sent_at"], cat["idx"]))
        cat = {k: v[order] for k, v in cat.items()}
        return pd.DataFrame(
            {
                "instance_id": ids[cat["idx"]],
                "journey": self.j.name,
                "step_id": cat["step_id"],
                "channel": cat["channel"],
                "sent": cat["sent"],
                "delivered": cat["delivered"],
                "opened": cat["opened"],
                "clicked": cat["clicked"],
                "sent_at": to_timestamp(cat["sent_at"]).to_numpy(),
            }
        )


# --- local time -------------------------------------------------------------------------------
_DAY = US_PER_DAY


def _time_of_day(t: np.ndarray, zone: Any) -> np.ndarray:
    """Microseconds since local midnight."""
    local = pd.to_datetime(np.asarray(t, dtype=np.int64), unit="us", utc=True).tz_convert(zone)
    off = np.asarray(local.tz_localize(None).as_unit("us").asi8, dtype=np.int64)
    return off % _DAY


def _us_of(t: time) -> int:
    return (t.hour * 3600 + t.minute * 60 + t.second) * 1_000_000


def _out_of_quiet(t: np.ndarray, quiet: QuietHours | None, zone: Any) -> np.ndarray:
    """A time inside the channel's quiet hours moves to their end."""
    if quiet is None or not len(t):
        return t
    tod = _time_of_day(t, zone)
    start, end = _us_of(quiet.start), _us_of(quiet.end)
    inside = (tod >= start) & (tod < end) if start <= end else (tod >= start) | (tod < end)
    return t + np.where(inside, (end - tod) % _DAY, 0)


def _next_local(t: np.ndarray, until: time, zone: Any) -> np.ndarray:
    """The next moment at local time ``until`` (now, if it is that time)."""
    if not len(t):
        return t
    return t + (_us_of(until) - _time_of_day(t, zone)) % _DAY

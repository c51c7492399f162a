"""Who enters a journey when, in a simulated world: ``journeys.triggers.entries`` on the
world's events and CRM fields, then the runner's one-instance and re-entry rules.

The trigger inputs are built from the truth: events keyed by the true person, each person's
sign-up, contract end as the CRM held it when the window opened (a renewal inside the window
moves it later) and renewal date, and daily churn-risk snapshots at 09:00 UTC (the truth's
hazard standing in for the model's score, ``WorldView.churn_risk``). One live instance per
customer and the re-entry cool-down are approximated by spacing a customer's entries by the
dialog's longest path plus ``reentry_after`` (the runner ends an instance when its dialog
does; the simulator does not track that across a customer's instances).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from journeys.definition import Journey, PredictiveTrigger, WaitForStep, WaitStep, successors
from journeys.triggers import entries
from simulator.clock import US_PER_DAY, to_timestamp, to_us
from simulator.goals import WorldView
from simulator.people import contract_end_at

ENTRY_COLUMNS = ("person", "entered_at", "product_id")
EVALUATE_AT_HOUR = 9  # daily scores are evaluated at 09:00 UTC


def _us(d: object) -> int:
    return 0 if d is None else int(d.total_seconds() * 1_000_000)  # type: ignore[attr-defined]


def world_entries(view: WorldView, journey: Journey, start: int, end: int) -> pd.DataFrame:
    """Entries (person index, entered_at in us, product_id) in [start, end), spaced per
    customer so one instance is live at a time."""
    ids = view.index.to_numpy()
    ev = view.events
    events = pd.DataFrame(
        {
            "customer_id": ids[ev["person"].to_numpy()],
            "ts": to_timestamp(ev["ts"].to_numpy()),
            "channel": ev["channel"].to_numpy(),
            "event_type": ev["event_type"].to_numpy(),
            "product_id": ev["product_id"].to_numpy(),
        }
    )
    if isinstance(journey.entry, PredictiveTrigger):
        profiles = _scores(view, journey.entry.score, start, end)
    else:
        profiles = _profiles(view, start)
    found = entries(journey, events, profiles, to_timestamp(np.array([start]))[0],
                    to_timestamp(np.array([end]))[0])  # fmt: skip
    person = view.index.get_indexer(found["customer_id"]).astype(np.int64)
    t = np.asarray(to_us(found["ts"]), dtype=np.int64)
    churned = view.col("churned_at", person)
    keep = (person >= 0) & ((churned < 0) | (churned > t))
    out = pd.DataFrame(
        {
            "person": person,
            "entered_at": t,
            "product_id": found["product_id"].to_numpy(dtype=object),
        }
    )[keep]
    return _spaced(out, longest_path_us(journey) + _us(journey.rules.reentry_after))


def _profiles(view: WorldView, start: int) -> pd.DataFrame:
    """The CRM fields triggers read, as held when the window opens."""
    p = view.people
    idx = np.arange(len(p))
    end = contract_end_at(p, idx, np.full(len(p), start))
    return pd.DataFrame(
        {
            "customer_id": view.index.to_numpy(),
            "sign_up": to_timestamp(p["tenure_start"].to_numpy()),
            "contract_end": to_timestamp(end),
            "renewed_at": to_timestamp(p["renewed_at"].to_numpy()),
        }
    )


def _scores(view: WorldView, score: str, start: int, end: int) -> pd.DataFrame:
    """Daily snapshots of the score for everyone alive."""
    first = start - start % US_PER_DAY + EVALUATE_AT_HOUR * 3600 * 1_000_000
    days = np.arange(first, end, US_PER_DAY, dtype=np.int64)
    n = len(view.people)
    idx, at = np.tile(np.arange(n), len(days)), np.repeat(days, n)
    churned = view.col("churned_at", idx)
    alive = (churned < 0) | (churned > at)
    idx, at = idx[alive], at[alive]
    return pd.DataFrame(
        {
            "customer_id": view.index.to_numpy()[idx],
            "scored_at": to_timestamp(at),
            score: view.churn_risk(idx, at),
        }
    )


def longest_path_us(journey: Journey) -> int:
    """The longest a pass through the steps can take (a cycle counts once; ``until``: a day),
    capped at the goal window."""
    by_id = {s.id: s for s in journey.steps}
    memo: dict[str, int] = {}

    def visit(sid: str, seen: frozenset[str]) -> int:
        if sid in memo:
            return memo[sid]
        s = by_id[sid]
        own = 0
        if isinstance(s, WaitStep):
            own = _us(s.duration) if s.duration is not None else US_PER_DAY
        elif isinstance(s, WaitForStep):
            own = _us(s.timeout)
        nxt = [visit(t, seen | {sid}) for t in successors(s) if t not in seen]
        memo[sid] = own + max(nxt, default=0)
        return memo[sid]

    return min(visit(journey.steps[0].id, frozenset()), _us(journey.goal.within))


def _spaced(entries: pd.DataFrame, gap: int) -> pd.DataFrame:
    """Keep a customer's entries at least ``gap`` apart (one live instance, the cool-down)."""
    e = entries.sort_values(["person", "entered_at"], kind="stable").reset_index(drop=True)
    person, t = e["person"].to_numpy(), e["entered_at"].to_numpy()
    keep = np.zeros(len(e), dtype=bool)
    last_p, last_t = -1, 0
    for i in range(len(e)):
        if person[i] != last_p or t[i] >= last_t + gap:
            keep[i] = True
            last_p, last_t = person[i], t[i]
    return e[keep].sort_values(["entered_at", "person"], kind="stable").reset_index(drop=True)

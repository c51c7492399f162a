"""People and households: latent traits that drive every later stage (the truth).

Traits are correlated through age, so that observable features (plan, app use, spend) carry
signal about the hidden ones, as in real customer bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from simulator.clock import DAYS_PER_MONTH, START_US, US_PER_DAY, person_time_key


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Robert William James John Michael David Richard Thomas Charles Christopher Daniel Matthew "
    "Anthony Andrew Joseph Edward Peter Samuel Benjamin Alexander Jonathan Nicholas Stephen "
    "Oliver Harry George Jack Jacob Noah Leo Oscar Arthur Henry Theo Mohammed Raj Tariq "
    "Elizabeth Margaret Katherine Jennifer Patricia Susan Rebecca Victoria Alexandra Jessica "
    "Sarah Emma Olivia Amelia Isla Ava Sophie Grace Lily Chloe Emily Hannah Lucy Ella Mia "
    "Charlotte Abigail Zara Priya Aisha Fatima Megan Laura Rachel Helen Claire Joanne Nicola"
)
# Nicknames the same person uses on other systems (Robert in the CRM, Bob on the e-shop).
NICKNAMES = dict(
    pair.split("/")
    for pair in _words(
        "Robert/Bob William/Bill James/Jim Michael/Mike David/Dave Richard/Rick Thomas/Tom "
        "Charles/Charlie Christopher/Chris Daniel/Dan Matthew/Matt Anthony/Tony Andrew/Andy "
        "Joseph/Joe Edward/Ed Peter/Pete Samuel/Sam Benjamin/Ben Alexander/Alex Jonathan/Jon "
        "Nicholas/Nick Stephen/Steve Elizabeth/Liz Margaret/Maggie Katherine/Kate "
        "Jennifer/Jenny Patricia/Pat Susan/Sue Rebecca/Becky Victoria/Vicky Alexandra/Alex "
        "Jessica/Jess Charlotte/Lottie Abigail/Abi Henry/Harry"
    )
)
LAST_NAMES = _words(
    "Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson Evans "
    "Walker White Roberts Green Hall Wood Jackson Clarke Patel Khan Lewis James Phillips Mason "
    "Mitchell Rose Davis Rodriguez Cox Alexander Morgan Hughes Edwards Hill Moore Clark Harris "
    "Scott Young Turner Cooper King Baker Ward Harrison Morris Lee Martin Allen Bell Carter "
    "Shaw Lloyd Collins Kelly Parker Cook Bailey Begum Murphy Price Richardson Chapman Ahmed "
    "Singh Hussain Ali Murray Knight Palmer Gray Fraser Marshall Owen Reid Grant Ellis"
)
PLANS = ("prepaid", "postpaid_s", "postpaid_m", "postpaid_l")
PLAN_ARPU = {"prepaid": 11.0, "postpaid_s": 18.0, "postpaid_m": 27.0, "postpaid_l": 40.0}


@dataclass
class PlanHistory:
    """The CRM's subscription history: a (plan, ARPU) row holds from ``valid_from`` until the
    person's next row. Every person has a first row (at sign-up); a query before it reads it."""

    person: np.ndarray  # int64 index into people
    valid_from: np.ndarray  # int64 us
    plan: np.ndarray  # object, one of PLANS
    arpu: np.ndarray  # float64, monthly revenue

    def __post_init__(self) -> None:
        order = np.lexsort((self.valid_from, self.person))
        for name in ("person", "valid_from", "plan", "arpu"):
            setattr(self, name, np.asarray(getattr(self, name))[order])
        self._keys = person_time_key(self.person, self.valid_from)  # sorted, as the rows are

    @classmethod
    def from_frame(cls, plans: pd.DataFrame, index: pd.Index) -> PlanHistory:
        """From a ``plans`` table (PLAN_COLUMNS), people located through ``index``."""
        valid = plans["valid_from"]
        if valid.dtype.kind == "M":
            valid = pd.DatetimeIndex(valid).tz_convert("UTC").as_unit("us").asi8
        return cls(
            index.get_indexer(plans["person_id"]).astype(np.int64),
            np.asarray(valid, dtype=np.int64),
            plans["plan"].to_numpy(dtype=object),
            plans["arpu"].to_numpy(dtype=np.float64),
        )

    def at(self, idx: np.ndarray, at_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(plan, arpu) valid at each moment: the person's last row from at or before it."""
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(self._keys, person_time_key(idx, at_us), side="right") - 1
        mine = (pos >= 0) & (self.person[np.maximum(pos, 0)] == idx)
        row = np.where(mine, pos, np.searchsorted(self.person, idx, side="left"))
        return self.plan[row], self.arpu[row]

    def last(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(plan, arpu) of each of ``n`` people's latest row: what the CRM holds today."""
        row = np.searchsorted(self.person, np.arange(n), side="right") - 1
        return self.plan[row], self.arpu[row]

    def frame(self, person_ids: np.ndarray) -> pd.DataFrame:
        """The ``plans`` table (valid_from as int64 us until written), by person then time."""
        return pd.DataFrame(
            {
                "person_id": person_ids[self.person],
                "valid_from": self.valid_from,
                "plan": self.plan,
                "arpu": self.arpu,
            }
        )


@dataclass
class Population:
    """People plus the household-level facts identity records are built from."""

    people: pd.DataFrame  # PEOPLE_COLUMNS (timestamps as int64 us, -1 = null) until written
    household_size: np.ndarray  # per person
    household_idx: np.ndarray  # per person, 0..H-1
    household_has_landline: np.ndarray  # per household
    household_has_family_email: np.ndarray  # per household
    plans: PlanHistory | None = None  # set by simulator.lifecycle.simulate_plan_changes


def _households(rng: np.random.Generator, n: int) -> np.ndarray:
    """Household index per person: sizes 1-4 (singles most common), members adjacent."""
    sizes = rng.choice([1, 2, 3, 4], size=n, p=[0.42, 0.30, 0.16, 0.12])
    sizes = sizes[np.cumsum(sizes) <= n]
    rest = n - int(sizes.sum())
    sizes = np.concatenate([sizes, np.ones(rest, dtype=sizes.dtype)])
    return np.repeat(np.arange(len(sizes)), sizes)


def _beta(rng: np.random.Generator, a: float, b: float, n: int, shift: np.ndarray) -> np.ndarray:
    """A Beta draw nudged by a per-person shift on the logit scale (keeps values in (0, 1))."""
    x = rng.beta(a, b, n)
    logit = np.log(x / (1 - x)) + shift
    return 1 / (1 + np.exp(-logit))


def make_people(rng: np.random.Generator, n: int) -> Population:
    """Draw ``n`` people in households with correlated latent traits."""
    hh = _households(rng, n)
    n_hh = int(hh.max()) + 1
    hh_size = np.bincount(hh)[hh]
    hh_last = rng.integers(0, len(LAST_NAMES), n_hh)
    # a few members of a household keep another surname (partners, lodgers)
    last_idx = np.where(rng.random(n) < 0.12, rng.integers(0, len(LAST_NAMES), n), hh_last[hh])
    first = np.asarray(FIRST_NAMES, dtype=object)[rng.integers(0, len(FIRST_NAMES), n)]
    # household members do not share a first name (a parent and child "Robert Smith" is too rare
    # to matter and would make the truth unknowable)
    key = pd.Series(first).astype(str) + "|" + pd.Series(hh).astype(str)
    dup = key.duplicated().to_numpy()
    while dup.any():
        first[dup] = np.asarray(FIRST_NAMES, dtype=object)[
            rng.integers(0, len(FIRST_NAMES), dup.sum())
        ]
        key = pd.Series(first).astype(str) + "|" + pd.Series(hh).astype(str)
        dup = key.duplicated().to_numpy()

    birth_year = np.clip(np.round(rng.normal(1980, 15, n)), 1940, 2007).astype(int)
    age = 2026 - birth_year
    young = (45 - age) / 20.0  # > 0 for the young
    tech = _beta(rng, 2.5, 2.5, n, 0.9 * young)
    price = _beta(rng, 2.0, 2.0, n, 0.3 * young)
    data = _beta(rng, 2.0, 2.5, n, 0.8 * young + 1.2 * (tech - 0.5))
    stream = _beta(rng, 2.0, 2.5, n, 0.6 * young + 1.0 * (data - 0.5))
    averse = np.where(rng.random(n) < 0.15, rng.beta(6, 2, n), rng.beta(1.5, 5, n))
    loyalty = _beta(rng, 3.0, 2.0, n, 0.3 * (age - 45) / 20.0)

    tenure_days = np.minimum(rng.exponential(4 * 365, n), 20 * 365) + 10
    tenure_start = START_US - (tenure_days * US_PER_DAY).astype(np.int64)
    p_prepaid = np.clip(0.22 + 0.25 * (price - 0.5) + 0.1 * young, 0.05, 0.6)
    prepaid = rng.random(n) < p_prepaid
    tier = np.clip(np.floor(data * 3 + rng.normal(0, 0.35, n)), 0, 2).astype(int) + 1
    plan_idx = np.where(prepaid, 0, tier)
    plan = np.asarray(PLANS, dtype=object)[plan_idx]
    arpu = np.round(
        np.array([PLAN_ARPU[p] for p in PLANS])[plan_idx] * rng.lognormal(0, 0.15, n), 2
    )
    # postpaid contracts end anywhere from 3 months ago (rolling) to 24 months ahead
    end_days = rng.uniform(-90, 730, n)
    contract_end = np.where(prepaid, -1, START_US + (end_days * US_PER_DAY).astype(np.int64))
    has_app = rng.random(n) < np.clip(0.15 + 0.7 * tech, 0, 0.95)
    base_purchase = 0.004 * rng.lognormal(0, 0.5, n) * (0.6 + tech)
    churn_base = churn_base_hazard(loyalty, price, prepaid, tenure_days)
    people = pd.DataFrame(
        {
            "person_id": [f"P{i:07d}" for i in range(n)],
            "household_id": [f"H{h:07d}" for h in hh],
            "first_name": first,
            "last_name": np.asarray(LAST_NAMES, dtype=object)[last_idx],
            "birth_year": birth_year,
            "plan": plan,
            "arpu": arpu,
            "tenure_start": tenure_start,
            "contract_end": contract_end,
            "has_app": has_app,
            "price_sensitivity": price,
            "tech_affinity": tech,
            "data_hunger": data,
            "streaming_affinity": stream,
            "family_size": hh_size,
            "contact_aversion": averse,
            "loyalty": loyalty,
            "base_purchase_rate": base_purchase,
            "churn_base_hazard": churn_base,
            "churned_at": np.full(n, -1, dtype=np.int64),
            "disengaged_at": np.full(n, -1, dtype=np.int64),
            "renewed_at": np.full(n, -1, dtype=np.int64),
            "prior_contract_end": np.full(n, -1, dtype=np.int64),
        }
    )
    return Population(
        people=people,
        household_size=hh_size,
        household_idx=hh,
        household_has_landline=rng.random(n_hh) < 0.45,
        household_has_family_email=rng.random(n_hh) < 0.35,
    )


def churn_base_hazard(
    loyalty: np.ndarray, price: np.ndarray, prepaid: np.ndarray, tenure_days: np.ndarray
) -> np.ndarray:
    """Daily churn hazard before contract, complaints and disengagement: the disloyal, the
    price-sensitive, prepaid and recent customers leave more readily."""
    return (
        0.00035
        * (1.6 - loyalty)
        * (0.6 + 0.8 * price)
        * np.where(prepaid, 1.6, 1.0)
        * np.clip(1.5 - tenure_days / (6 * 365), 0.6, 1.5)
    )


def static_plans(people: pd.DataFrame) -> pd.DataFrame:
    """A plan history with one row per person (their plan from sign-up): for worlds written
    before plan changes were simulated."""
    return pd.DataFrame(
        {
            "person_id": people["person_id"],
            "valid_from": people["tenure_start"],
            "plan": people["plan"],
            "arpu": people["arpu"],
        }
    )


def months_between(from_us: np.ndarray, to_us: np.ndarray) -> np.ndarray:
    """(to - from) in months; NaN where ``to`` is null (-1)."""
    to = np.asarray(to_us, dtype=np.int64)
    out = (to - np.asarray(from_us, dtype=np.int64)) / (US_PER_DAY * DAYS_PER_MONTH)
    return np.where(to < 0, np.nan, out)


def contract_end_at(people: pd.DataFrame, idx: np.ndarray, at_us: np.ndarray) -> np.ndarray:
    """Contract end as known at each moment: the prior end until a renewal happened."""
    renewed = people["renewed_at"].to_numpy()[idx]
    before = (renewed >= 0) & (np.asarray(at_us) < renewed)
    return np.where(
        before, people["prior_contract_end"].to_numpy()[idx], people["contract_end"].to_numpy()[idx]
    )


def profile_at(
    people: pd.DataFrame, idx: np.ndarray, at_us: np.ndarray, plans: PlanHistory | None = None
) -> pd.DataFrame:
    """The profile fields offers' eligibility rules read, from the truth (rules may only name
    fields of the profile_v1 FeatureService or its derived fields: offers.rules.rule_fields).
    Plan and ARPU are the ones valid at each moment when ``plans`` is given, else the table's."""
    at = np.broadcast_to(np.asarray(at_us, dtype=np.int64), idx.shape)
    if plans is None:
        plan, arpu = people["plan"].to_numpy()[idx], people["arpu"].to_numpy()[idx]
    else:
        plan, arpu = plans.at(idx, at)
    return pd.DataFrame(
        {
            "plan": pd.Categorical(plan, categories=PLANS),
            "tenure_months": months_between(people["tenure_start"].to_numpy()[idx], at),
            "months_left": months_between(at, contract_end_at(people, idx, at)),
            "arpu": arpu,
        }
    )

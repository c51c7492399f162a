"""Identity records are messy and hold traps, yet stay linkable by a careful resolver."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import phonenumbers
from rapidfuzz.distance import DamerauLevenshtein

from simulator.people import NICKNAMES
from simulator.world import World

NICK_TO_NAME = {v.lower(): k.lower() for k, v in NICKNAMES.items()}


def _e164(raw: str | None) -> str | None:
    if raw is None:
        return None
    num = phonenumbers.parse(raw, "GB")
    assert phonenumbers.is_valid_number(num), raw
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _normalised(idn: pd.DataFrame) -> pd.DataFrame:
    return idn.assign(
        em=idn.email.map(lambda x: x.strip().lower() if x else None),
        ph=idn.phone.map(_e164),
        fn=idn.first_name.map(lambda x: NICK_TO_NAME.get(x.lower(), x.lower()) if x else None),
    )


def _pairwise(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    def pairs(*cols: np.ndarray) -> int:
        c = pd.DataFrame(dict(enumerate(cols))).value_counts().to_numpy()
        return int((c * (c - 1) // 2).sum())

    tp, pred, true = pairs(labels, truth), pairs(labels), pairs(truth)
    return {
        "precision": tp / pred if pred else 1.0,
        "recall": tp / true,
        "f1": 2 * tp / (pred + true),
    }


class _Union:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, members: list[int]) -> None:
        for m in members[1:]:
            self.parent[self.find(m)] = self.find(members[0])

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def _naive(idn: pd.DataFrame, col: str) -> np.ndarray:
    u = _Union(len(idn))
    for members in idn.groupby(col).indices.values():
        u.join(list(members))
    return u.labels()


def _careful(idn: pd.DataFrame) -> np.ndarray:
    """A reference resolver: exact keys, and e-mail/phone only within one (fuzzy) first name."""
    u = _Union(len(idn))
    for col in ("login_id", "loyalty_id", "cookie_id"):
        for members in idn.groupby(col).indices.values():
            u.join(list(members))
    for col in ("em", "ph"):
        for members in idn.groupby(col).indices.values():
            reps: list[int] = []
            for i in (m for m in members if idn.fn.iat[m] is not None):
                close = [
                    r
                    for r in reps
                    if DamerauLevenshtein.distance(idn.fn.iat[i], idn.fn.iat[r]) <= 1
                ]
                if close:
                    u.join([close[0], i])
                else:
                    reps.append(i)
            if len(reps) <= 1:
                u.join(list(members))
    return u.labels()


def test_every_phone_is_a_valid_gb_number_in_many_formats(world: World) -> None:
    phones = world.identities.phone.dropna()
    e164 = phones.map(_e164)
    assert e164.str.match(r"^\+44\d{10}$").all()
    shapes = set(phones.map(lambda p: re.sub(r"\d", "9", p)))
    assert {"+99 9999 999999", "99999 999999", "99999999999", "+999999999999"} <= shapes
    assert any(s.startswith("(") for s in shapes) and any("-" in s for s in shapes)


def test_emails_differ_only_by_case_and_spaces(world: World) -> None:
    em = world.identities.email.dropna()
    assert (em != em.str.strip()).any() and (em.str.strip() != em.str.strip().str.lower()).any()
    assert em.str.strip().str.match(r"^[^@\s]+@[^@\s]+\.[a-z.]+$", flags=re.I).all()


def test_names_carry_nicknames_and_typos(world: World) -> None:
    idn = world.identities.merge(
        world.people[["person_id", "first_name"]],
        left_on="true_person_id",
        right_on="person_id",
        suffixes=("", "_true"),
    )
    named = idn[idn.first_name.notna()]
    nick = named.first_name == named.first_name_true.map(NICKNAMES)
    lower = named.first_name.str.lower()
    typo = ~nick & (lower != named.first_name_true.str.lower())
    assert nick.sum() > 0 and typo.sum() > 0
    assert typo.mean() < 0.05


def test_household_emails_and_landlines_are_shared_by_different_people(world: World) -> None:
    idn = _normalised(world.identities)
    per_email = idn.dropna(subset=["em"]).groupby("em").true_person_id.nunique()
    per_phone = idn.dropna(subset=["ph"]).groupby("ph").true_person_id.nunique()
    assert (per_email > 1).sum() >= 5
    assert (per_phone > 1).sum() >= 5
    # ... and they are household traps, never strangers
    hh = world.people.set_index("person_id").household_id
    shared = idn[idn.em.isin(per_email[per_email > 1].index)]
    assert (shared.groupby("em").true_person_id.agg(lambda s: hh[s].nunique()) == 1).all()


def test_cookies_link_only_through_a_login(world: World) -> None:
    web = world.identities[world.identities.source == "web"]
    assert web.cookie_id.notna().all() and web.login_id.notna().all()
    assert web[["email", "phone", "first_name", "loyalty_id"]].isna().all().all()
    anonymous = set(world.events.cookie_id.dropna()) - set(web.cookie_id)
    assert anonymous, "some cookies never log in and stay anonymous"


def test_naive_merging_fails_precision_but_a_careful_resolver_meets_the_target(
    world: World,
) -> None:
    idn = _normalised(world.identities)
    truth = idn.true_person_id.to_numpy()
    assert _pairwise(_naive(idn, "em"), truth)["precision"] < 0.97
    assert _pairwise(_naive(idn, "ph"), truth)["precision"] < 0.995
    careful = _pairwise(_careful(idn), truth)
    assert careful["precision"] >= 0.99
    assert careful["f1"] >= 0.97

"""Identity records as the source systems hold them: several per person, messy, with traps.

Linking signal: every person has a personal key (mobile, personal e-mail, login or loyalty card)
on most records. Traps: household e-mails and landlines shared by different people, common
names shared across households, nicknames, typos, case and spaces, phone formats, cookies that
only join a person through a login.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import IDENTITY_COLUMNS
from simulator.clock import START_US, US_PER_DAY
from simulator.messy import (
    AREA_CODES,
    DOMAINS,
    MOBILE_PREFIXES,
    format_phone,
    mess_email,
    mess_name,
    numbers,
    pick,
)
from simulator.people import Population


@dataclass
class Keys:
    """Per-person identifiers (as the event-producing systems hold them) and cookies."""

    email: np.ndarray  # object, e-mail the marketing system sends to (messy), or None
    mobile: np.ndarray  # object, mobile as the SMS system holds it, or None
    landline: np.ndarray  # object, household landline, or None
    loyalty_id: np.ndarray  # object or None
    login_id: np.ndarray  # object or None
    cookie_id: np.ndarray  # flat: every cookie
    cookie_person: np.ndarray  # flat: owner index
    cookie_known: np.ndarray  # flat: has been seen with a login (has an identity record)
    cookie_offset: np.ndarray  # per person: first cookie index
    cookie_count: np.ndarray  # per person


def make_identities(rng: np.random.Generator, pop: Population) -> tuple[pd.DataFrame, Keys]:
    """Identity records of every source (IDENTITY_COLUMNS) and the per-person keys for events."""
    p = pop.people
    n = len(p)
    first = p["first_name"].to_numpy()
    last = p["last_name"].to_numpy()
    tech = p["tech_affinity"].to_numpy()
    hh = pop.household_idx
    n_hh = len(pop.household_has_landline)

    # --- keys -------------------------------------------------------------------------------
    has_mobile = rng.random(n) < 0.97
    mobile_nat = numbers(rng, n, MOBILE_PREFIXES, 8)
    land_nat = numbers(rng, n_hh, AREA_CODES, 7)
    has_land = pop.household_has_landline[hh]
    has_personal_email = rng.random(n) < np.clip(0.7 + 0.35 * tech, 0, 0.98)
    stems = rng.integers(0, 4, n)
    suffix = rng.permutation(n) + 1  # unique, so two John Smiths never share a mailbox
    personal = np.empty(n, dtype=object)
    for i in range(n):
        f, s = first[i].lower(), last[i].lower()
        local = (f"{f}.{s}", f"{f[0]}{s}", f"{f}{s}", f"{s}.{f}")[stems[i]]
        personal[i] = f"{local}{suffix[i]}@{pick(rng, DOMAINS)}"
    hh_last = pd.Series(last).groupby(hh).first().to_numpy()
    family = np.array(
        [f"the{hh_last[h].lower()}s{h + 1}@{pick(rng, DOMAINS)}" for h in range(n_hh)],
        dtype=object,
    )
    uses_family = (
        pop.household_has_family_email[hh] & (pop.household_size > 1) & (rng.random(n) < 0.7)
    )
    loyalty_member = rng.random(n) < np.clip(0.3 + 0.4 * p["loyalty"].to_numpy(), 0, 0.9)
    loyalty_ids = np.array(
        [f"LC{d:09d}" for d in rng.choice(10**9, n, replace=False)], dtype=object
    )
    has_login = p["has_app"].to_numpy() | (rng.random(n) < 0.25 + 0.5 * tech)
    login_ids = np.array(
        [f"acc-{d:08d}" for d in rng.choice(10**8, n, replace=False)], dtype=object
    )

    # --- records ----------------------------------------------------------------------------
    rows: list[tuple] = []
    crm_email = np.full(n, None, dtype=object)
    crm_phone = np.full(n, None, dtype=object)
    tenure = p["tenure_start"].to_numpy()

    def when(i: int, after: int) -> int:
        return int(max(after, tenure[i]) + rng.integers(0, 300) * US_PER_DAY // 10)

    for i in range(n):
        pid = p["person_id"].iat[i]
        fam = family[hh[i]] if uses_family[i] else None
        own = personal[i] if has_personal_email[i] else None
        mob = mobile_nat[i] if has_mobile[i] else None
        land = land_nat[hh[i]] if has_land[i] else None
        loy = loyalty_ids[i] if loyalty_member[i] else None
        log = login_ids[i] if has_login[i] else None
        strong = mob is not None or own is not None or loy is not None or log is not None
        # CRM: the contract holder record; half of the family-email users gave the family address
        email = fam if fam is not None and (own is None or rng.random() < 0.5) else own
        phone = mob if mob is not None else land
        crm_email[i] = mess_email(rng, email) if email else None
        crm_phone[i] = format_phone(rng, phone) if phone else None
        typo = 0.04 if strong else 0.0
        loy_on_land = loy is not None and land is not None and rng.random() < 0.35
        crm_loy = loy if rng.random() < (0.95 if loy_on_land else 0.75) else None
        rows.append(
            (
                "crm",
                crm_email[i],
                crm_phone[i],
                mess_name(rng, first[i], typo, 0.0),
                mess_name(rng, last[i], typo, 0.0),
                crm_loy,
                None,
                None,
                int(tenure[i]),
                pid,
            )
        )
        if log is not None:  # the login is an e-shop account (the app signs in with it too)
            e = own or fam
            rows.append(
                (
                    "eshop",
                    mess_email(rng, e) if e else None,
                    format_phone(rng, mob)
                    if mob and (e is None or e != email or rng.random() < 0.4)
                    else None,
                    mess_name(rng, first[i], 0.02, 0.3),
                    mess_name(rng, last[i], 0.02, 0.0),
                    None,
                    log,
                    None,
                    when(i, START_US - 400 * US_PER_DAY),
                    pid,
                )
            )
        if log is not None and p["has_app"].iat[i]:
            rows.append(
                (
                    "app",
                    mess_email(rng, own) if own and rng.random() < 0.5 else None,
                    None,
                    None,
                    None,
                    None,
                    log,
                    None,
                    when(i, START_US - 300 * US_PER_DAY),
                    pid,
                )
            )
        if loy is not None:
            ph = land if loy_on_land else mob
            on_land = loy_on_land
            # a card registered on the home phone usually carries the holder's own e-mail
            e = (
                own
                if on_land and rng.random() < 0.7
                else (
                    (fam if fam is not None and rng.random() < 0.5 else own)
                    if rng.random() < 0.4
                    else None
                )
            )
            rows.append(
                (
                    "loyalty",
                    mess_email(rng, e) if e else None,
                    format_phone(rng, ph) if ph else None,
                    mess_name(rng, first[i], 0.0 if on_land else 0.03, 0.15),
                    mess_name(rng, last[i], 0.0 if on_land else 0.03, 0.0),
                    loy,
                    None,
                    None,
                    when(i, START_US - 700 * US_PER_DAY),
                    pid,
                )
            )
        if rng.random() < 0.45:  # newsletter sign-up: an e-mail, maybe a first name
            e = fam if fam is not None and rng.random() < 0.6 else own
            if e is not None:
                fn = first[i] if e == fam or rng.random() < 0.6 else None
                rows.append(
                    (
                        "newsletter",
                        mess_email(rng, e),
                        None,
                        fn,
                        None,
                        None,
                        None,
                        None,
                        when(i, START_US - 500 * US_PER_DAY),
                        pid,
                    )
                )

    # --- cookies: 1-3 per person; those seen with a login have a web identity record ---------
    cookie_count = rng.choice([1, 2, 3], n, p=[0.5, 0.35, 0.15])
    cookie_offset = np.concatenate([[0], np.cumsum(cookie_count)[:-1]])
    n_cookies = int(cookie_count.sum())
    cookie_person = np.repeat(np.arange(n), cookie_count)
    cookie_ids = np.array(
        [f"ck_{d:012x}" for d in rng.choice(2**46, n_cookies, replace=False)], dtype=object
    )
    first_cookie = np.zeros(n_cookies, dtype=bool)
    first_cookie[cookie_offset] = True
    cookie_known = has_login[cookie_person] & (first_cookie | (rng.random(n_cookies) < 0.6))
    for c in np.flatnonzero(cookie_known):
        i = cookie_person[c]
        rows.append(
            (
                "web",
                None,
                None,
                None,
                None,
                None,
                login_ids[i],
                cookie_ids[c],
                when(i, START_US - 200 * US_PER_DAY),
                p["person_id"].iat[i],
            )
        )

    cols = [c for c in IDENTITY_COLUMNS if c != "record_id"]  # the rows' order, from the contract
    ident = pd.DataFrame(rows, columns=cols)
    ident = ident.sample(frac=1.0, random_state=np.random.RandomState(int(rng.integers(2**31))))
    ident.insert(0, "record_id", [f"R{i:08d}" for i in range(len(ident))])
    ident = ident.reset_index(drop=True)

    email_for_events = np.where(pd.isna(crm_email), None, crm_email)
    keys = Keys(
        email=email_for_events,
        mobile=np.where(has_mobile, crm_phone, None),
        landline=np.where(
            has_land, np.array([format_phone(rng, x) for x in land_nat[hh]], dtype=object), None
        ),
        loyalty_id=np.where(loyalty_member, loyalty_ids, None),
        login_id=np.where(has_login, login_ids, None),
        cookie_id=cookie_ids,
        cookie_person=cookie_person,
        cookie_known=cookie_known,
        cookie_offset=cookie_offset,
        cookie_count=cookie_count,
    )
    return ident, keys

"""How source systems write a person's identifiers: e-mails with case and typos, phone
numbers in every format, names with typos and nicknames; and random valid numbers to mess up.

Split from :mod:`simulator.identities`, which decides which records exist and holds which
keys; this module only decides how each key is written.
"""

from __future__ import annotations

import numpy as np

from simulator.people import NICKNAMES

DOMAINS = (
    "gmail.com",
    "outlook.com",
    "yahoo.co.uk",
    "hotmail.co.uk",
    "btinternet.com",
    "icloud.com",
)
# Prefixes whose every number is valid to libphonenumber (London, Glasgow, Manchester, Liverpool).
AREA_CODES = ("0207", "0208", "0141", "0161", "0151")
MOBILE_PREFIXES = ("071", "073", "074", "075", "077", "078")


def numbers(rng: np.random.Generator, n: int, prefixes: tuple[str, ...], digits: int) -> np.ndarray:
    """``n`` distinct national numbers under prefixes whose whole range libphonenumber accepts
    as valid GB numbers (checked by the tests), drawn without a per-number parse."""
    block = 8 * 10 ** (digits - 1)  # subscriber numbers 2xx..9xx
    draw = rng.choice(len(prefixes) * block, n, replace=False)
    pre = np.asarray(prefixes, dtype=object)[draw // block]
    return np.array(
        [f"{p}{2 * 10 ** (digits - 1) + d}" for p, d in zip(pre, draw % block, strict=True)],
        dtype=object,
    )


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def mess_email(rng: np.random.Generator, email: str) -> str:
    """Case and surrounding spaces only: the same mailbox, typed differently."""
    r = rng.random()
    if r < 0.15:
        email = email.upper()
    elif r < 0.35:
        local, domain = email.split("@")
        email = ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.capitalize()
    if rng.random() < 0.12:
        email = " " * int(rng.integers(1, 3)) + email
    if rng.random() < 0.12:
        email = email + " "
    return email


def format_phone(rng: np.random.Generator, national: str) -> str:
    """A GB number in one of the formats people and systems type (all parse to one E.164)."""
    rest = national[1:]
    head = 5 if national.startswith("07") or len(national) == 11 and national[1] == "1" else 3
    a, b = national[:head], national[head:]
    forms = (
        f"{a} {b}",
        f"+44 {rest[: head - 1]} {b}",
        f"+44{rest}",
        f"{a}-{b[:3]}-{b[3:]}",
        national,
        f"({a}) {b}",
        f"+44 (0){rest[: head - 1]} {b}",
    )
    return forms[int(rng.choice(len(forms), p=[0.3, 0.2, 0.12, 0.1, 0.15, 0.08, 0.05]))]


def mess_name(rng: np.random.Generator, name: str, typo: float, nickname: float) -> str:
    """Nicknames (Robert/Bob), the odd typo, and case as typed."""
    if rng.random() < nickname and name in NICKNAMES:
        name = NICKNAMES[name]
    if rng.random() < typo and len(name) > 3:
        i = int(rng.integers(1, len(name) - 1))
        name = (
            name[:i] + name[i + 1 :]
            if rng.random() < 0.5
            else name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        )
    r = rng.random()
    return name.upper() if r < 0.06 else name.lower() if r < 0.12 else name

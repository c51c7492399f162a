"""Normalisers for identifiers and names, shared by batch resolution and the real-time lookup.

Every identifier is reduced to one canonical string before it is hashed, so the batch resolver,
``lookup`` and ``map_identifiers`` agree on keys. Parsing uses well-kept libraries
(``phonenumbers``, ``email-validator``, ``rapidfuzz``) instead of hand-written regexes.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import pandas as pd
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from rapidfuzz.distance import OSA

# Common English nicknames -> the formal names they shorten (Alex is Alexander or Alexandra).
_FORMALS: dict[str, tuple[str, ...]] = {
    "robert": ("bob", "bobby", "rob", "robbie", "bert"),
    "elizabeth": ("liz", "lizzie", "lizzy", "beth", "betty", "eliza", "libby", "elisabeth"),
    "william": ("bill", "billy", "will", "willy", "liam"),
    "james": ("jim", "jimmy", "jamie"),
    "michael": ("mike", "mikey", "mick", "micky"),
    "david": ("dave", "davey"),
    "katherine": ("kate", "katie", "kathy", "kat", "catherine", "cathy", "kathryn", "kay"),
    "thomas": ("tom", "tommy"),
    "christopher": ("chris", "kit"),
    "christine": ("chris", "chrissy"),
    "alexander": ("alex", "al", "xander", "sandy"),
    "alexandra": ("alex", "lexi", "sandy", "sandra"),
    "daniel": ("dan", "danny"),
    "matthew": ("matt", "matty"),
    "nicholas": ("nick", "nicky"),
    "nicola": ("nicky", "nikki"),
    "stephen": ("steve", "stevie", "steven"),
    "jennifer": ("jen", "jenny", "jenn"),
    "susan": ("sue", "susie", "suzy"),
    "margaret": ("maggie", "meg", "peggy", "marge", "madge"),
    "anthony": ("tony",),
    "andrew": ("andy", "drew"),
    "benjamin": ("ben", "benny"),
    "joseph": ("joe", "joey"),
    "john": ("johnny", "jon"),
    "jonathan": ("jon", "jonny"),
    "henry": ("harry", "hal", "hank"),
    "edward": ("ed", "eddie", "ted", "teddy", "ned"),
    "richard": ("rich", "rick", "ricky", "dick", "richie"),
    "charles": ("charlie", "chuck", "chas"),
    "charlotte": ("charlie", "lottie"),
    "patrick": ("pat", "paddy"),
    "patricia": ("pat", "patty", "tricia", "trish"),
    "victoria": ("vicky", "vic", "tori"),
    "rebecca": ("becky", "becca"),
    "timothy": ("tim", "timmy"),
    "peter": ("pete",),
    "gregory": ("greg",),
    "samuel": ("sam", "sammy"),
    "samantha": ("sam", "sammy"),
    "frederick": ("fred", "freddie", "freddy"),
    "lawrence": ("larry", "laurie"),
    "kenneth": ("ken", "kenny"),
    "ronald": ("ron", "ronnie"),
    "donald": ("don", "donny"),
    "abigail": ("abi", "abby", "abbie", "gail"),
    "amanda": ("mandy",),
    "deborah": ("debbie", "deb", "debra"),
    "jessica": ("jess", "jessie"),
    "eleanor": ("ellie", "nell", "nora"),
    "emily": ("em", "emmy"),
    "joanne": ("jo", "joanna"),
    "philip": ("phil", "phillip"),
    "anne": ("annie", "ann", "anna"),
    "sarah": ("sara", "sally"),
    "oliver": ("ollie", "olly"),
    "olivia": ("liv", "livvy"),
    "joshua": ("josh",),
    "nathan": ("nate", "nat"),
    "natalie": ("nat", "nattie"),
    "gerald": ("gerry", "jerry"),
    "mohammed": ("mohammad", "muhammad", "mohamed", "mo"),
}
NICKNAMES: dict[str, tuple[str, ...]] = {}
for _formal, _nicks in _FORMALS.items():
    for _nick in _nicks:
        NICKNAMES[_nick] = (*NICKNAMES.get(_nick, ()), _formal)

_NOT_LETTERS = re.compile(r"[^a-z]+")


def forget_cached() -> int:
    """Empty every memo of this module (they hold raw and canonical e-mails, phones and names):
    the right to erasure reaches memory too. Entries dropped; the caches refill as used."""
    caches = [v for v in globals().values() if hasattr(v, "cache_clear")]
    dropped = sum(c.cache_info().currsize for c in caches)
    for cache in caches:
        cache.cache_clear()
    return dropped


class NormalizeError(ValueError):
    """A value that cannot be used as the identifier its column claims to hold."""


def blank(value: object) -> bool:
    """None, NaN, pandas NA or only spaces: the value is missing."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def email_key(value: object) -> str | None:
    """Cheap canonical form (strip, NFC, lower-case) used for keys everywhere; no validation."""
    if blank(value):
        return None
    return unicodedata.normalize("NFC", str(value).strip()).lower()


@lru_cache(maxsize=200_000)
def _email_problem(key: str) -> str | None:
    """Why ``key`` is not an e-mail address (None when it is); cached, the check is ~30 us."""
    try:
        validate_email(key, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def normalize_email(value: object) -> str | None:
    """Validated canonical e-mail; raises ``NormalizeError`` when the syntax is wrong."""
    key = email_key(value)
    if key is None:
        return None
    problem = _email_problem(key)
    if problem:
        raise NormalizeError(f"{str(value).strip()!r} is not an e-mail address ({problem})")
    return key


@lru_cache(maxsize=200_000)
def normalize_phone(value: str, region: str) -> str:
    """E.164 form of a phone number written in any national or international format."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise NormalizeError(f"{value!r} is not a phone number for region {region}") from exc
    if not phonenumbers.is_possible_number(number):
        raise NormalizeError(f"{value!r} is not a phone number for region {region}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_key(value: object, region: str) -> str | None:
    """E.164 or None (blank or unparsable): the lenient form for event streams."""
    if blank(value):
        return None
    try:
        return normalize_phone(str(value).strip(), region)
    except NormalizeError:
        return None


def code_key(value: object, *, fold: bool) -> str | None:
    """Loyalty cards, logins, cookies: trimmed; spaces/dashes dropped and case folded if asked."""
    if blank(value):
        return None
    text = str(value).strip()
    if fold:
        text = re.sub(r"[\s\-]+", "", text).casefold()
    return text or None


def loyalty_key(value: object) -> str | None:
    return code_key(value, fold=True)


def login_key(value: object) -> str | None:
    if blank(value):
        return None
    return str(value).strip().casefold() or None


def cookie_key(value: object) -> str | None:
    return code_key(value, fold=False)


def lenient_key(field: str, value: object, region: str) -> str | None:
    """Canonical identifier, or None when blank or unparsable: for events and real-time calls."""
    if field == "phone":
        return phone_key(value, region)
    parse = {"email": email_key, "loyalty_id": loyalty_key, "login_id": login_key}
    return parse.get(field, cookie_key)(value)


@lru_cache(maxsize=100_000)
def _clean_name(value: str) -> str:
    folded = unicodedata.normalize("NFKD", value.strip().casefold())
    ascii_only = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return _NOT_LETTERS.sub("", ascii_only)


def normalize_name(value: object) -> str | None:
    """Letters only, case-folded, accents removed; raises when a non-blank name has no letters."""
    if blank(value):
        return None
    cleaned = _clean_name(str(value))
    if not cleaned:
        raise NormalizeError(f"{str(value).strip()!r} has no letters")
    return cleaned


def canonical_first(name: str) -> str:
    """One formal name per nickname (the first listed), so Bob and Robert hash equal."""
    return NICKNAMES.get(name, (name,))[0]


@lru_cache(maxsize=100_000)
def name_forms(name: str) -> frozenset[str]:
    """The name itself and every formal name it may shorten."""
    return frozenset((name, *NICKNAMES.get(name, ())))


@lru_cache(maxsize=100_000)
def name_variants(name: str, nicknames: bool = True) -> frozenset[str]:
    """The name's forms and, for forms of 4+ letters, each with one letter (not the initial)
    deleted. Two names that share a variant are one typo apart, so the salted hashes of the
    variants let stored names (hashes only) be compared as ``names_match`` compares plain ones."""
    out: set[str] = set()
    for form in name_forms(name) if nicknames else (name,):
        out.add(form)
        if len(form) >= 4:
            out.update(form[:i] + form[i + 1 :] for i in range(1, len(form)))
    return frozenset(out)


@lru_cache(maxsize=500_000)
def names_match(a: str, b: str) -> bool:
    """Same person's name: a shared formal name (Alex/Alexandra), or one typo apart.

    A typo is one edit or transposition (optimal string alignment distance 1) between names of
    4+ letters with the same initial; Nick/Rick and Joe/Jon stay different.
    """
    fa, fb = name_forms(a), name_forms(b)
    if fa & fb:
        return True
    return any(
        x[0] == y[0] and max(len(x), len(y)) >= 4 and OSA.distance(x, y, score_cutoff=1) <= 1
        for x in fa
        for y in fb
    )


@lru_cache(maxsize=200_000)
def is_mobile(e164: str) -> bool:
    """Mobiles are personal; landlines are shared by a household."""
    number = phonenumbers.parse(e164)
    return phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE

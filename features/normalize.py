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
from rapidfuzz.distance import OSA, JaroWinkler

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
# German short forms (letters as ``normalize_name`` leaves them: Käthe -> kathe).
_FORMALS_DE: dict[str, tuple[str, ...]] = {
    "johannes": ("hans", "hannes", "jo", "johann"),
    "johanna": ("hanna", "hanne", "jo"),
    "katharina": ("kathi", "kati", "katja", "kathe", "katarina"),
    "elisabeth": ("lisa", "elli", "liesel", "lies", "else", "sabine"),
    "alexander": ("sascha",),
    "andreas": ("andi", "andy", "andre"),
    "christian": ("chris", "christl"),
    "christina": ("tina", "chris", "christine", "kristina"),
    "christoph": ("chris", "christof", "stoffel"),
    "daniela": ("dani", "ela"),
    "dominik": ("dome", "dom", "dominic"),
    "franziska": ("franzi", "fanny"),
    "friedrich": ("fritz", "friedel", "fred"),
    "gabriele": ("gabi", "gaby"),
    "heinrich": ("heinz", "heiner", "hein", "henry"),
    "margarete": ("grete", "gretel", "margit", "margret", "maggie", "gretchen"),
    "matthias": ("matze", "hias", "mathias", "matthew"),
    "maximilian": ("max", "maxi"),
    "michael": ("micha", "michi", "michel"),
    "sebastian": ("basti", "bastian"),
    "stefanie": ("steffi", "stephanie"),
    "stefan": ("steffen", "stephan"),
    "susanne": ("susi", "sanne", "susan"),
    "theresa": ("resi", "theresia", "therese"),
    "tobias": ("tobi",),
    "ulrike": ("ulli", "uli", "rike"),
    "ulrich": ("ulli", "uli", "ulrik"),
    "veronika": ("vroni", "vera", "veronica"),
    "waltraud": ("traudl", "traudel", "walli"),
    "wilhelm": ("willi", "willy", "wilm", "helm"),
    "wolfgang": ("wolf", "wolfi"),
    "josef": ("sepp", "seppl", "jupp", "joseph"),
    "barbara": ("babsi", "barbel", "babs"),
    "bernhard": ("bernd", "benno"),
    "nikolaus": ("klaus", "niko", "nick"),
    "georg": ("schorsch", "jorg", "george"),
    "rosemarie": ("rosi", "rose"),
    "hannelore": ("hanne", "lore"),
    "annemarie": ("anne", "anni", "marie"),
    "benedikt": ("bene",),
    "jakob": ("jacob", "jaki"),
    "ludwig": ("lutz", "louis"),
    "magdalena": ("lena", "leni", "magda"),
    "helene": ("lene", "leni", "helena"),
}
NICKNAMES: dict[str, tuple[str, ...]] = {}
for _formal, _nicks in (*_FORMALS.items(), *_FORMALS_DE.items()):
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


_UMLAUT_SPELLING = re.compile(r"([aou])e")
SHORT_FORMS: dict[str, tuple[str, ...]] = {}  # formal name -> its short forms
for _table in (_FORMALS, _FORMALS_DE):
    for _formal, _nicks in _table.items():
        SHORT_FORMS[_formal] = (*SHORT_FORMS.get(_formal, ()), *_nicks)


@lru_cache(maxsize=100_000)
def name_forms(name: str) -> frozenset[str]:
    """The name itself, its umlauts written out undone (Mueller -> muller, as Müller
    normalises), and every formal name either may shorten."""
    spellings = {name, _UMLAUT_SPELLING.sub(r"\1", name)}
    return frozenset((*spellings, *(f for s in spellings for f in NICKNAMES.get(s, ()))))


@lru_cache(maxsize=100_000)
def short_forms(name: str) -> frozenset[str]:
    """The name's forms and the short forms of each (Johanna -> hanna, hanne, jo): what a
    misspelt short form (Hnna, Sussi) is compared with."""
    forms = name_forms(name)
    return forms | {n for f in forms for n in SHORT_FORMS.get(f, ())}


@lru_cache(maxsize=100_000)
def name_variants(name: str, nicknames: bool = True) -> frozenset[str]:
    """The name's forms and, for those of 4+ letters, each with one letter
    (not the initial, nor a final a/e/o/s) deleted. Two names that share a variant are about
    one typo apart, so the salted hashes of the variants let stored names (hashes only) be
    compared as ``names_match`` compares plain ones."""
    out: set[str] = set()
    for form in name_forms(name) if nicknames else (name,):
        out.add(form)
        if len(form) >= 4:
            end = len(form) - 1 if _GENDER_END.search(form) else len(form)
            out.update(form[:i] + form[i + 1 :] for i in range(1, end))
    return frozenset(out)


# A final a/e/o/s after another letter: Andrea/Andreas, Simon/Simone, Maria/Marie are two
# people's names, not one name with a typo (a doubled final letter, Lisaa, still is a typo).
_GENDER_END = re.compile(r"([^aeos])[aeos]$|([aeos])(?!\2)[aeos]$")


def gender_pair(x: str, y: str) -> bool:
    """Names that differ only in a final a/e/o/s (one added, or one for another), or in
    an -an/-na ending (Christian/Christina)."""
    x, y = sorted((x, y), key=len)
    if len(y) == len(x) + 1 and y.startswith(x):
        return y[-1] in "aeos" and y[-1] != y[-2]
    if len(x) != len(y) or x[:-2] != y[:-2]:
        return False
    if {x[-2:], y[-2:]} == {"an", "na"}:
        return True
    return x[-2] == y[-2] and {x[-1], y[-1]} <= set("aeo")


def _typo(x: str, y: str, gendered: bool) -> bool:
    return (
        x[0] == y[0]
        and max(len(x), len(y)) >= 4
        and OSA.distance(x, y, score_cutoff=1) <= 1
        and not (gendered and gender_pair(x, y))
    )


@lru_cache(maxsize=500_000)
def names_match(a: str, b: str, gendered: bool = True) -> bool:
    """Same person's name: a shared formal name (Alex/Alexandra), or one typo apart, also
    from a short form of the other's name (Sussi/Susanne).

    A typo is one edit or transposition (optimal string alignment distance 1) between names of
    4+ letters with the same initial; Nick/Rick and Joe/Jon stay different, and so, when
    ``gendered``, do names that differ in a final a/e/o/s (Andrea/Andreas, Daniel/Daniela).
    Two formal names sharing a short form (Christian/Christine: Chris) do not match.
    """
    fa, fb = name_forms(a), name_forms(b)
    if fa & fb:
        return True
    sa, sb = short_forms(a), short_forms(b)
    return any(_typo(x, y, gendered) for x in fa for y in sb) or any(
        _typo(x, y, gendered) for x in sa for y in fb
    )


SIMILAR = 0.8  # Jaro-Winkler similarity of two spellings that ``names_similar`` accepts


@lru_cache(maxsize=500_000)
def names_similar(a: str, b: str) -> bool:
    """Looser than ``names_match``: two typos, or a short form written wrongly (Theesa/Theresa,
    Vroin/Veronika), judged by Jaro-Winkler and at most two edits over the names' forms (Karin
    and Katharina stay apart); only ever used together with a personal key and another name
    part that matches."""
    pairs = [(x, y) for x in name_forms(a) for y in short_forms(b)]
    pairs += [(x, y) for x in short_forms(a) for y in name_forms(b)]
    return names_match(a, b) or any(
        x[0] == y[0]
        and JaroWinkler.similarity(x, y) >= SIMILAR
        and OSA.distance(x, y, score_cutoff=2) <= 2
        and min(len(x), len(y)) >= 5
        and not gender_pair(x, y)
        for x, y in pairs
    )


@lru_cache(maxsize=200_000)
def is_mobile(e164: str) -> bool:
    """Mobiles are personal; landlines are shared by a household."""
    number = phonenumbers.parse(e164)
    return phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE

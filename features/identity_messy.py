"""Messy German identity records as a new user's source systems hold them, with the truth.

Made independently of ``simulator/`` (which models a British world) to measure the resolver as
a newcomer would: German names with nicknames (Johannes/Hans), transposed letters, a missing or
doubled letter, umlauts written out (Müller/Mueller); national and international phone formats
(0301234567, +49 30 1234567, 0049 ...); households sharing a family e-mail and a landline, with
different first names (and, rarely, a father and son of one name); a small share of malformed
e-mails and phones. Columns are those ``nextbest identity resolve --csv`` reads, plus
``true_person_id``. Seeded: one seed, one table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.schema import IDENTITY_INPUT_COLUMNS

# The sizes of issue 16's table (records).
SIZES = {"10k": 10_000, "129k": 129_000, "515k": 515_000}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FEMALE = _words(
    "Anna Andrea Angelika Anja Barbara Birgit Brigitte Christina Claudia Daniela Doris Elisabeth "
    "Emma Franziska Gabriele Gertrud Hannah Heike Helga Ingrid Jana Johanna Julia Jutta Karin "
    "Katharina Kerstin Klara Laura Lea Lena Lisa Margarete Maria Marie Martina Monika Nicole "
    "Petra Renate Sabine Sandra Sara Simone Sophie Stefanie Susanne Tanja Theresa Ulrike Ursula "
    "Veronika Waltraud Yvonne Zoe"
)
MALE = _words(
    "Alexander Andreas Bernhard Christian Daniel David Dieter Dominik Florian Frank Friedrich "
    "Georg Gerhard Günter Hans Heinrich Helmut Jakob Jan Johannes Jonas Josef Jörg Jürgen Karl "
    "Klaus Lukas Manfred Markus Martin Matthias Maximilian Michael Niklas Norbert Oliver Paul "
    "Peter Philipp Ralf Rainer Robert Sebastian Simon Stefan Thomas Tobias Uwe Volker Werner "
    "Wilhelm Wolfgang"
)
LAST = _words(
    "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer Koch "
    "Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann "
    "Lange Schmitt Werner Schmitz Krause Meier Lehmann Schmid Schulze Maier Köhler Herrmann König "
    "Walter Mayer Huber Kaiser Fuchs Peters Lang Scholz Möller Weiß Jung Hahn Schubert Vogel "
    "Friedrich Keller Günther Frank Berger Winkler Roth Beck Lorenz Baumann Franke Albrecht "
    "Schuster Simon Ludwig Böhm Winter Kraus Martin Schumacher Krämer Vogt Stein Jäger Otto "
    "Sommer Groß Seidel Heinrich Brandt Haas Schreiber Graf Schulte Dietrich Ziegler Kuhn Kühn "
    "Pohl Engel Horn Busch Bergmann Thomas Voigt Sauer Arnold Wolff Pfeiffer Ebert Brückner "
    "Kessler Nowak Kowalski Yilmaz Kaya Demir Şahin Öztürk Nguyen Rossi Popović"
)
# Short forms people give instead of their formal first name.
NICKNAMES = {
    "Johannes": ("Hans", "Jo"),
    "Katharina": ("Kathi", "Katja", "Käthe"),
    "Elisabeth": ("Lisa", "Elli", "Liesel"),
    "Alexander": ("Alex",),
    "Andreas": ("Andi",),
    "Christian": ("Chris",),
    "Christina": ("Tina", "Chris"),
    "Daniela": ("Dani",),
    "Dominik": ("Dome",),
    "Franziska": ("Franzi",),
    "Friedrich": ("Fritz",),
    "Gabriele": ("Gabi",),
    "Heinrich": ("Heinz", "Heiner"),
    "Johanna": ("Hanna",),
    "Josef": ("Sepp", "Jupp"),
    "Margarete": ("Grete", "Gretel", "Margit"),
    "Matthias": ("Matze", "Hias"),
    "Maximilian": ("Max",),
    "Michael": ("Micha",),
    "Sebastian": ("Basti",),
    "Stefanie": ("Steffi",),
    "Susanne": ("Susi",),
    "Theresa": ("Resi",),
    "Thomas": ("Tom",),
    "Tobias": ("Tobi",),
    "Ulrike": ("Ulli",),
    "Veronika": ("Vroni",),
    "Waltraud": ("Traudl",),
    "Wilhelm": ("Willi",),
    "Wolfgang": ("Wolf",),
}
AREA_CODES = ("30", "40", "89", "221", "69", "711", "211", "351", "341", "511", "421", "911")
MOBILE_PREFIXES = ("151", "152", "157", "160", "170", "171", "172", "175", "176", "177", "179")
DOMAINS = ("web.de", "gmx.de", "gmx.net", "t-online.de", "gmail.com", "outlook.de", "posteo.de")
BAD_EMAILS = ("{local}(at){domain}", "{local}@", "{local}@@{domain}", "{local} {domain}")
BAD_PHONES = ("n/a", "0", "keine", "+49", "--")
UMLAUTS = str.maketrans(
    {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"}
)


@dataclass
class Person:
    """One person's true facts and the identifiers their source systems may hold."""

    pid: str
    first: str
    last: str
    mobile: str | None
    email: str | None
    loyalty: str | None
    login: str | None
    landline: str | None  # the household's
    family_email: str | None  # the household's
    parent_mobile: str | None = None  # a parent's mobile, given for this person's contract


class _Mess:
    """The ways people and clerks write names, phones and e-mails differently."""

    def __init__(self, rng: random.Random, bad_share: float) -> None:
        self.rng, self.bad_share = rng, bad_share

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return self.rng.choice(options)

    def first(self, name: str) -> str:
        if name in NICKNAMES and self.chance(0.15):
            name = self.pick(NICKNAMES[name])
        return self.name(name)

    def name(self, name: str) -> str:
        r = self.rng.random()
        if len(name) >= 5 and r < 0.03:  # two neighbouring letters swapped
            i = self.rng.randrange(1, len(name) - 1)
            name = name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        elif len(name) >= 5 and r < 0.05:  # a letter left out
            i = self.rng.randrange(1, len(name))
            name = name[:i] + name[i + 1 :]
        elif len(name) >= 4 and r < 0.07:  # a letter typed twice
            i = self.rng.randrange(1, len(name))
            name = name[:i] + name[i] + name[i:]
        if self.chance(0.3):
            name = name.translate(UMLAUTS)
        if self.chance(0.05):
            name = name.upper()
        elif self.chance(0.04):
            name = name.lower()
        return f" {name}" if self.chance(0.02) else name

    def phone(self, e164: str | None) -> str | None:
        """+49... written as people do: national, spaced, slashed or international."""
        if e164 is None:
            return None
        if self.chance(self.bad_share):
            return self.pick(BAD_PHONES)
        area, number = e164.split(" ")
        style = self.rng.randrange(7)
        return (
            f"0{area}{number}",
            f"0{area} {number}",
            f"0{area}/{number}",
            f"+49 {area} {number}",
            f"+49 (0){area} {number}",
            f"0049 {area} {number}",
            f"+49{area}-{number[:3]} {number[3:]}",
        )[style]

    def email(self, address: str | None) -> str | None:
        if address is None:
            return None
        local, domain = address.split("@")
        if self.chance(self.bad_share):
            return self.pick(BAD_EMAILS).format(local=local, domain=domain)
        if self.chance(0.1):
            address = address.capitalize() if self.chance(0.5) else address.upper()
        return f"{address} " if self.chance(0.03) else address


def _ascii(name: str) -> str:
    return name.translate(UMLAUTS).lower().replace("ş", "s").replace("ć", "c")


def _people(rng: random.Random, n_people: int) -> list[Person]:
    """Households of 1-5 people; most share a surname, some a landline and a family e-mail."""
    people: list[Person] = []
    numbers = iter(rng.sample(range(10_000_000, 100_000_000), 2 * n_people + 10))  # unique
    serial = iter(rng.sample(range(10**8), 4 * n_people + 10))
    taken: set[str] = set()

    def unique(stem: str, numbers: int, domain: str) -> str:
        """An address nobody has yet: two Markus Krügers never share a mailbox."""
        while (address := f"{stem}{rng.randrange(numbers)}@{domain}") in taken:
            numbers *= 10
        taken.add(address)
        return address

    h = 0
    while len(people) < n_people:
        h += 1
        size = rng.choices([1, 2, 3, 4, 5], [0.38, 0.34, 0.13, 0.11, 0.04])[0]
        surname = rng.choice(LAST)
        landline = None
        if rng.random() < 0.55:
            area = rng.choice(AREA_CODES)
            landline = f"{area} {next(numbers) // (10 if len(area) == 2 else 100)}"
        family = None
        if size > 1 and rng.random() < 0.4:
            domain = rng.choice(DOMAINS)
            family = unique(f"familie.{_ascii(surname)}", 10_000, domain)
        firsts: list[str] = []
        for k in range(size):
            pool = FEMALE if rng.random() < 0.5 else MALE
            first = rng.choice(pool)
            namesake = k == 1 and size > 2 and rng.random() < 0.03
            if namesake:
                first = firsts[0]  # father and son of one name: a trap, not a link
            while not namesake and first in firsts:
                first = rng.choice(pool)
            firsts.append(first)
            last = surname if rng.random() < 0.9 else rng.choice(LAST)
            mobile = None
            parent = people[-k].mobile if k else None
            if rng.random() < 0.85:
                prefix = rng.choice(MOBILE_PREFIXES)
                mobile = f"{prefix} {next(numbers)}"
            email = None
            if rng.random() < 0.7:
                domain = rng.choice(DOMAINS)
                email = unique(f"{_ascii(first)}.{_ascii(last)}", 1000, domain)
            people.append(
                Person(
                    pid=f"P{len(people):07d}",
                    first=first,
                    last=last,
                    mobile=mobile,
                    email=email,
                    loyalty=f"KD-{next(serial):08d}" if rng.random() < 0.45 else None,
                    login=f"user{next(serial):08d}" if rng.random() < 0.4 else None,
                    landline=landline,
                    family_email=family,
                    parent_mobile=parent if k and (mobile is None or rng.random() < 0.05) else None,
                )
            )
    return people[:n_people]


def _records(p: Person, m: _Mess) -> list[tuple]:
    """The person's records in each source: (email, phone, first, last, loyalty, login).

    Each person mostly gives one e-mail and one phone (the family's or their own), so nearly
    all of a person's records are joined by identifiers, many of them shared by the household.
    """
    own_email = p.email if p.family_email is None or (p.email and m.chance(0.55)) else None
    own_phone = p.mobile if p.landline is None or (p.mobile and m.chance(0.65)) else None
    pref_email, alt_email = (own_email, p.family_email) if own_email else (p.family_email, p.email)
    pref_phone, alt_phone = (own_phone, p.landline) if own_phone else (p.landline, p.mobile)

    def email() -> str | None:
        return pref_email if alt_email is None or m.chance(0.99) else alt_email

    def phone() -> str | None:
        return pref_phone if alt_phone is None or m.chance(0.99) else alt_phone

    contract_phone = p.parent_mobile if p.parent_mobile and m.chance(0.5) else phone()
    rows = [(email(), contract_phone, m.first(p.first), m.name(p.last), None, None)]
    if p.login:  # e-shop account
        rows.append(
            (
                email(),
                phone() if pref_email is None or m.chance(0.4) else None,
                m.first(p.first),
                m.name(p.last),
                None,
                p.login,
            )
        )
    if p.loyalty:  # loyalty card
        rows.append(
            (
                email() if pref_phone is None or m.chance(0.4) else None,
                phone(),
                m.first(p.first),
                m.name(p.last),
                p.loyalty,
                None,
            )
        )
    if m.chance(0.4):  # call centre: the number they called from, and the name
        rows.append((None, phone(), m.first(p.first), m.name(p.last), None, None))
    if m.chance(0.35):  # newsletter: an e-mail, sometimes a first name
        rows.append((email(), None, m.first(p.first) if m.chance(0.9) else None, None, None, None))
    if m.chance(0.25):  # a second contract
        rows.append((email(), phone(), m.first(p.first), m.name(p.last), None, None))
    return [
        (m.email(e), m.phone(ph), f, la, loy, log)
        for e, ph, f, la, loy, log in rows
        if e or ph or loy or log
    ]


def messy_records(n_records: int, seed: int = 0, *, bad_share: float = 0.002) -> pd.DataFrame:
    """``n_records`` shuffled records (IDENTITY_INPUT_COLUMNS + ``true_person_id``)."""
    if n_records < 1:
        raise ValueError(f"n_records: must be at least 1, got {n_records}")
    if not 0 <= bad_share < 1:
        raise ValueError(f"bad_share: must be in [0, 1), got {bad_share}")
    rng = random.Random(seed)
    mess = _Mess(rng, bad_share)
    rows: list[tuple] = []
    for p in _people(rng, n_records // 2 + 10):
        rows += [(*r, p.pid) for r in _records(p, mess)]
        if len(rows) >= n_records:
            break
    rows = rows[:n_records]
    rng.shuffle(rows)
    cols = ["email", "phone", "first_name", "last_name", "loyalty_id", "login_id", "true_person_id"]
    frame = pd.DataFrame(rows, columns=cols, dtype=object)
    frame.insert(0, "record_id", [f"R{i:07d}" for i in range(len(frame))])
    frame["cookie_id"] = None
    return frame[[*IDENTITY_INPUT_COLUMNS, "true_person_id"]]


def write_sizes(out_dir: str, seed: int = 0, sizes: dict[str, int] = SIZES) -> dict[str, str]:
    """One CSV per size (``messy_de_10k.csv`` ...); name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, n in sizes.items():
        path = out / f"messy_de_{name}.csv"
        messy_records(n, seed).to_csv(path, index=False)
        paths[name] = str(path)
    return paths

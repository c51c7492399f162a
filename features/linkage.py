"""Batch record linkage: cluster identity records with a guarded union-find.

Pure Python over hashed keys, no database: ``features.identity`` feeds it the batch plus the
existing customers those keys touch, and persists the result. Rules, strongest first:
shared login or loyalty card; a cookie seen together with a login; the same e-mail, or the same
phone, when the first and last names agree (or one side has none and the match is unambiguous).
Guards: no cluster above ``max_size`` records or with more than ``max_names`` distinct first names;
e-mail/phone never join clusters holding different logins, loyalty cards or mobiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from features import normalize as nz
from features.identity_records import Record

EXCLUSIVE = ("login", "loyalty", "mobile")  # one person holds at most one of each
HELD = ("login", "loyalty", "mobile", "phone", "email")  # key types the guards compare
# identifier field -> stored key type, strongest first (phones: "mobile" or "phone")
KEY_KINDS = dict(
    login_id="login", loyalty_id="loyalty", cookie_id="cookie", email="email", phone="phone"
)
# stored key type -> the word rule names use
RULES = dict(
    login_id="login", loyalty_id="loyalty_card", email="email", mobile="mobile", phone="landline"
)
MAX_PASSES = 4  # over e-mails and phones; a pass that joins nothing ends it
MAX_BLOCK_NAMES = 200  # named clusters in a block compared pairwise by name
# (salted hashes of the name's variants, plain text when the record is in this batch)
Name = tuple[frozenset[str], str | None]


def _names_meet(xs: Iterable[Name], ys: Iterable[Name], gendered: bool = True) -> bool:
    """Any pair agrees: both plain and ``names_match`` (rapidfuzz), or else shared variant
    hashes (the same test on names that are stored only as hashes)."""
    ys = list(ys)
    for vx, tx in xs:
        for vy, ty in ys:
            if nz.names_match(tx, ty, gendered) if tx and ty else not vx.isdisjoint(vy):
                return True
    return False


def distinct_names(names: Iterable[Name], gendered: bool = True) -> int:
    """How many different people the first names suggest (greedy grouping of agreeing names)."""
    groups: list[list[Name]] = []
    for name in sorted(names, key=lambda n: (min(n[0]), n[1] or "")):
        for group in groups:
            if _names_meet([name], group, gendered):
                group.append(name)
                break
        else:
            groups.append([name])
    return len(groups)


def split_apart(xs: set[tuple[int, int]], ys: set[tuple[int, int]]) -> bool:
    """Records on two sides of one steward's split (``identity split``): never one person."""
    if not xs or not ys:
        return False
    side = dict(xs)
    return any(sid in side and side[sid] != s for sid, s in ys)


@dataclass
class Node:
    """A batch record or an existing customer, as the linker sees it."""

    size: int
    firsts: set[Name] = field(default_factory=set)
    lasts: set[Name] = field(default_factory=set)
    has_login: bool = False
    held: dict[str, set[str]] = field(default_factory=dict)  # login/loyalty/mobile/phone hashes
    sides: set[tuple[int, int]] = field(default_factory=set)  # (split, side) of split records


class Linker:
    """Union-find whose unions are refused when they would join clearly different people."""

    def __init__(self, nodes: list[Node], max_size: int, max_names: int) -> None:
        self.parent = list(range(len(nodes)))
        self.nodes = nodes
        self.max_size, self.max_names = max_size, max_names
        self.links: list[tuple[int, int, str]] = []  # (node, node, rule) of every union made
        self.gendered = True  # Andrea/Andreas are two people (see ``link_guarded``)
        self.stats = dict.fromkeys(
            (
                "refused_size",
                "refused_names",
                "refused_exclusive",
                "ambiguous_keys",
                "joined_by_name",
                "refused_split",
            ),
            0,
        )

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, *, need_names: bool, rule: str) -> bool:
        """Join two clusters unless a guard refuses; ``need_names`` asks for agreeing names.
        A union made is remembered as ``(a, b, rule)`` for ``identity explain``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        na, nb = self.nodes[ra], self.nodes[rb]
        if na.size + nb.size > self.max_size:
            self.stats["refused_size"] += 1
            return False
        if split_apart(na.sides, nb.sides):
            self.stats["refused_split"] += 1
            return False
        if need_names and not self.compatible(ra, rb):
            self.stats["refused_names"] += 1
            return False
        if need_names and self.conflict(ra, rb):
            self.stats["refused_exclusive"] += 1
            return False
        if na.firsts and nb.firsts and distinct_names(na.firsts | nb.firsts) > self.max_names:
            self.stats["refused_names"] += 1
            return False
        keep, gone = (ra, rb) if ra < rb else (rb, ra)
        self.parent[gone] = keep
        self.links.append((a, b, rule))
        k, g = self.nodes[keep], self.nodes[gone]
        k.size += g.size
        k.firsts |= g.firsts
        k.lasts |= g.lasts
        k.has_login |= g.has_login
        k.sides |= g.sides
        for kind, values in g.held.items():
            k.held.setdefault(kind, set()).update(values)
        return True

    def compatible(self, ra: int, rb: int) -> bool:
        na, nb = self.nodes[ra], self.nodes[rb]
        for xs, ys in ((na.firsts, nb.firsts), (na.lasts, nb.lasts)):
            if xs and ys and not _names_meet(xs, ys, self.gendered):
                return False
        return True

    def similar(self, ra: int, rb: int) -> bool:
        """One name part agrees (``names_match``) and the other is a looser match
        (``names_similar``), on plain names: the test of two records holding one mobile."""
        na, nb = self.nodes[ra], self.nodes[rb]
        parts = ((na.firsts, nb.firsts), (na.lasts, nb.lasts))
        plain = [([x for _, x in xs if x], [y for _, y in ys if y]) for xs, ys in parts]
        if not all(xs and ys for xs, ys in plain):
            return False
        meet = [any(nz.names_match(x, y) for x in xs for y in ys) for xs, ys in plain]
        near = [any(nz.names_similar(x, y) for x in xs for y in ys) for xs, ys in plain]
        return (meet[0] and near[1]) or (meet[1] and near[0])

    def exclusive(self, r: int) -> bool:
        """Does the cluster hold a login, loyalty card or mobile (a key of one person)?"""
        return any(self.nodes[r].held.get(k) for k in EXCLUSIVE)

    def fits(self, ra: int, rb: int) -> bool:
        """Would a name-guarded union of these two clusters pass the name and key tests?"""
        if ra == rb:
            return False
        if not self.compatible(ra, rb):
            self.stats["refused_names"] += 1
            return False
        if self.conflict(ra, rb):
            self.stats["refused_exclusive"] += 1
            return False
        return True

    def shared_keys(self, ra: int, rb: int) -> int:
        """How many stored keys (mobiles, landlines, e-mails, ...) two clusters both hold."""
        ha, hb = self.nodes[ra].held, self.nodes[rb].held
        return sum(len(ha[k] & hb[k]) for k in ha.keys() & hb.keys())

    def conflict(self, ra: int, rb: int) -> bool:
        """Different logins, loyalty cards or mobiles: two people, whatever else they share."""
        ha, hb = self.nodes[ra].held, self.nodes[rb].held
        return any(ha.get(k) and hb.get(k) and ha[k].isdisjoint(hb[k]) for k in EXCLUSIVE)

    def link_keys(
        self,
        keys: list[dict[str, str]],
        stored: dict[str, list[int]],
        order: list[str],
        kinds: list[dict[str, str]],
    ) -> None:
        """Every key type in ``order`` (strongest first): group batch records (``keys``: field
        -> key per record; ``kinds``: field -> stored key type) and stored customers
        (``stored``: key -> nodes) on it. E-mails and phones are passed over again while
        unions happen: a cluster grown on a phone may now agree by name with one on an e-mail."""
        groups: dict[str, list[tuple[str, list[int]]]] = {}
        for column in order:
            by_key: dict[str, list[int]] = defaultdict(list)
            for i, ks in enumerate(keys):
                if column in ks:
                    by_key[ks[column]].append(i)
            groups[column] = [(kh, g + stored.get(kh, [])) for kh, g in by_key.items()]
        for column in ("login_id", "loyalty_id", "cookie_id"):
            for _, group in groups.get(column, []):
                if column == "cookie_id":
                    self.link_cookie(group)
                else:
                    self.link_all(group, RULES[column])
        base = self.stats["ambiguous_keys"]
        for _ in range(MAX_PASSES):
            self.stats["ambiguous_keys"] = base
            made = len(self.links)
            for column in (c for c in order if c in ("email", "phone")):
                for _, group in groups[column]:
                    self.link_guarded(group, RULES[kinds[group[0]][column]])
            if len(self.links) == made:
                break
        self.link_names_in_blocks(groups)

    def link_names_in_blocks(self, groups: dict[str, list[tuple[str, list[int]]]]) -> None:
        """Inside a block (nodes joined by any shared key, guards aside), two clusters with the
        same first and last name (typos, short forms) and no other such cluster in the block
        are one person: Helmut Weber on the household landline and on his own mobile."""
        block = list(range(len(self.nodes)))

        def top(i: int) -> int:
            while block[i] != i:
                block[i] = block[block[i]]
                i = block[i]
            return i

        for column_groups in groups.values():
            for _, group in column_groups:
                for other in group[1:]:
                    block[top(other)] = top(group[0])
        roots: dict[int, set[int]] = defaultdict(set)
        for i in range(len(self.nodes)):
            roots[top(i)].add(self.find(i))
        for clusters in roots.values():
            named = sorted(r for r in clusters if self.nodes[r].firsts and self.nodes[r].lasts)
            if not 1 < len(named) <= MAX_BLOCK_NAMES:
                continue
            pairs = [(a, b) for k, a in enumerate(named) for b in named[k + 1 :]]
            matches = [(a, b) for a, b in pairs if self.compatible(a, b)]
            counts: dict[int, int] = defaultdict(int)
            for a, b in matches:
                counts[a] += 1
                counts[b] += 1
            for a, b in matches:  # only unambiguous pairs: one candidate each
                if counts[a] == 1 and counts[b] == 1 and not self.conflict(a, b):
                    self.union(a, b, need_names=True, rule="same_name_in_block")

    def link_all(self, group: list[int], kind: str) -> None:
        """Strong keys (login, loyalty card): everyone sharing the key, subject to the caps."""
        for other in group[1:]:
            self.union(group[0], other, need_names=False, rule=f"same_{kind}")

    def link_cookie(self, group: list[int]) -> None:
        """A cookie joins the one person who logged in with it; shared devices link nobody."""
        logged = sorted({self.find(i) for i in group if self.nodes[i].has_login})
        if len(logged) > 1:
            self.stats["ambiguous_keys"] += 1
            return
        anchor = logged[0] if logged else group[0]
        for other in group:
            self.union(anchor, other, need_names=True, rule="cookie_with_login")

    def link_by_name(self, named: list[tuple[int, tuple[str, str]]]) -> None:
        """Opt-in last resort for pieces that share no key: a full name (canonical first + last
        hashes) held by exactly two clusters joins them, unless the union guards refuse (e.g.
        different logins or mobiles). Three or more holders: a common name, several people."""
        holders: dict[tuple[str, str], set[int]] = defaultdict(set)
        for i, full in named:
            holders[full].add(self.find(i))
        for full in sorted(holders):
            roots = sorted({self.find(r) for r in holders[full]})
            if len(roots) == 2 and self.union(
                roots[0], roots[1], need_names=True, rule="same_full_name"
            ):
                self.stats["joined_by_name"] += 1

    def link_guarded(self, group: list[int], kind: str) -> None:
        """E-mail or phone: merge only clusters whose names agree; nameless ones join the one
        named cluster on the key, and stay apart when the key is shared by several people.
        Unions inside a key several people share are named ``name_in_shared_<kind>``."""
        member: dict[int, int] = {}  # cluster root -> its first record holding the key
        for i in group:
            member.setdefault(self.find(i), i)
        if len(member) < 2:  # one cluster holds the key already (later passes, mostly)
            return
        named = [m for r, m in sorted(member.items()) if self.nodes[r].firsts]
        unnamed = [m for r, m in sorted(member.items()) if not self.nodes[r].firsts]
        start = len(self.links)
        # a final letter apart (Andrea/Andreas) is a typo on a personal key, two people on a
        # landline or on a key that other first names show to be shared
        self.gendered = kind == "landline" or (len(named) > 1 and self.several_people(named))
        # people with an exclusive key first: a keyless Hans matching two of them is ambiguous
        named.sort(key=lambda m: not self.exclusive(self.find(m)))
        buckets: list[int] = []
        for m in named:
            fits = [b for b in buckets if self.fits(self.find(b), self.find(m))]
            roots = [self.find(b) for b in fits]
            pairs = [(x, y) for k, x in enumerate(roots) for y in roots[k + 1 :]]
            if any(self.conflict(x, y) or not self.compatible(x, y) for x, y in pairs):
                # two people the name fits (namesakes; Alex for Alexander and Sandra)
                self.stats["ambiguous_keys"] += 1
                continue
            joined = [self.union(b, m, need_names=True, rule=f"same_{kind}") for b in fits]
            if not any(joined):
                buckets.append(m)
        buckets = list({self.find(b): b for b in buckets}.values())
        one_person = not self.gendered
        self.gendered = True
        if kind in ("mobile", "email") and len(buckets) > 1:
            # on a key only one person shows, the key itself is the second piece of evidence
            self.join_similar(buckets, kind, 1 if one_person else 2)
        if len({self.find(b) for b in buckets}) > 1:
            shared = f"name_in_shared_{kind}"
            self.links[start:] = [(a, b, shared) for a, b, _ in self.links[start:]]
            if unnamed:
                self.stats["ambiguous_keys"] += 1
            return
        anchor = buckets[0] if buckets else (unnamed[0] if unnamed else None)
        for m in unnamed:
            if anchor is not None:
                self.union(anchor, m, need_names=True, rule=f"same_{kind}")

    def several_people(self, members: list[int]) -> bool:
        """Do these clusters show two people at least: first names that differ even leniently,
        or two different logins, loyalty cards or mobiles?"""
        nodes = [self.nodes[self.find(m)] for m in members]
        names = sorted({n for node in nodes for n in node.firsts}, key=lambda n: n[1] or "")
        if any(  # any two that disagree: Alex meeting Alexander and Sandra proves nothing
            not _names_meet([x], [y], gendered=False)
            for k, x in enumerate(names)
            for y in names[k + 1 :]
        ):
            return True
        return any(len({v for n in nodes for v in n.held.get(k, ())}) > 1 for k in EXCLUSIVE)

    def join_similar(self, buckets: list[int], kind: str, min_shared: int) -> None:
        """Clusters on one mobile or e-mail whose names are close (a typo in each part, a
        misspelt short form) join unless an exclusive key differs, when they share
        ``min_shared`` keys: two where the key shows several people (a parent's mobile given
        for a child, a family e-mail), else the key alone."""
        for i, a in enumerate(buckets):
            for b in buckets[i + 1 :]:
                ra, rb = self.find(a), self.find(b)
                if (
                    ra != rb
                    and self.shared_keys(ra, rb) >= min_shared
                    and self.similar(ra, rb)
                    and not self.conflict(ra, rb)
                ):
                    self.union(a, b, need_names=False, rule=f"similar_name_on_{kind}")


@dataclass
class BlockLinks:
    """The clusters of one block: a label per record (0..k-1, in order of first appearance)
    and every union made, as (record index, record index, rule)."""

    labels: list[int]
    links: list[tuple[int, int, str]]


def key_kind(field: str, value: str) -> str:
    """Stored key type of a canonical identifier: the field's, with mobiles told from
    landlines (a mobile is personal, a landline is shared by a household)."""
    if field == "phone" and nz.is_mobile(value):
        return "mobile"
    return KEY_KINDS[field]


def record_node(record: Record, kinds: dict[str, str]) -> Node:
    """A batch record as the linker sees it, names in plain text (compared with rapidfuzz);
    ``kinds``: field -> stored key type of each of its keys (``key_kind``)."""
    first, last = record.first, record.last
    return Node(
        1,
        {(nz.name_variants(first, True), first)} if first else set(),
        {(nz.name_variants(last, False), last)} if last else set(),
        "login_id" in record.keys,
        {t: {record.keys[f]} for f, t in kinds.items() if t in HELD},
    )


def link_block(
    records: list[Record],
    *,
    max_size: int,
    max_names: int,
    sides: list[set[tuple[int, int]]] | None = None,
) -> BlockLinks:
    """Cluster one block of records (those connected by any shared key) into people, in a
    fresh graph (no stored customer): pure and deterministic, so a batch engine may call it
    block by block, in any process, and get the same answer as one run over the whole input.
    ``sides``: per record, the (split, side) pairs of a steward's splits it is on
    (``graph_store.split_sides``), so split records stay apart."""
    kinds = [{f: key_kind(f, v) for f, v in r.keys.items()} for r in records]
    nodes = [record_node(r, k) for r, k in zip(records, kinds, strict=True)]
    for node, on in zip(nodes, sides or [], strict=False):
        node.sides = set(on)
    linker = Linker(nodes, max_size, max_names)
    linker.link_keys([r.keys for r in records], {}, list(KEY_KINDS), kinds)
    label: dict[int, int] = {}
    labels = [label.setdefault(linker.find(i), len(label)) for i in range(len(records))]
    return BlockLinks(labels, linker.links)


def assign_ids(
    linker: Linker,
    record_hashes: list[str],
    index: dict[str, int],
    created: dict[str, datetime | None],
    new_id: Callable[[str], str],
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """One id per cluster: the oldest stored customer in it (the others merge into it), else
    ``new_id`` of the cluster's smallest record hash, so re-runs on a fresh database agree.
    Returns the id per record, the new ids, and the (merged, surviving) pairs."""
    far_future = datetime.max.replace(tzinfo=UTC)
    stored: dict[int, list[str]] = defaultdict(list)
    for cid, node in index.items():
        stored[linker.find(node)].append(cid)
    smallest: dict[int, str] = {}
    for i, h in enumerate(record_hashes):
        root = linker.find(i)
        smallest[root] = min(h, smallest.get(root, h))
    root_id: dict[int, str] = {}
    new_customers: list[str] = []
    merged: list[tuple[str, str]] = []
    for root in sorted(set(smallest) | set(stored)):
        olds = sorted(stored.get(root, []), key=lambda c: (created[c] or far_future, c))
        if olds:
            root_id[root] = olds[0]
            merged += [(o, olds[0]) for o in olds[1:]]
        else:
            root_id[root] = new_id(smallest[root])
            new_customers.append(root_id[root])
    return [root_id[linker.find(i)] for i in range(len(record_hashes))], new_customers, merged

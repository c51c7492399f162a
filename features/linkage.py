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

EXCLUSIVE = ("login", "loyalty", "mobile")  # one person holds at most one of each
# (salted hashes of the name's variants, plain text when the record is in this batch)
Name = tuple[frozenset[str], str | None]


def _names_meet(xs: Iterable[Name], ys: Iterable[Name]) -> bool:
    """Any pair agrees: both plain and ``names_match`` (rapidfuzz), or else shared variant
    hashes (the same test on names that are stored only as hashes)."""
    ys = list(ys)
    for vx, tx in xs:
        for vy, ty in ys:
            if nz.names_match(tx, ty) if tx and ty else not vx.isdisjoint(vy):
                return True
    return False


def distinct_names(names: Iterable[Name]) -> int:
    """How many different people the first names suggest (greedy grouping of agreeing names)."""
    groups: list[list[Name]] = []
    for name in sorted(names, key=lambda n: (min(n[0]), n[1] or "")):
        for group in groups:
            if _names_meet([name], group):
                group.append(name)
                break
        else:
            groups.append([name])
    return len(groups)


@dataclass
class Node:
    """A batch record or an existing customer, as the linker sees it."""

    size: int
    firsts: set[Name] = field(default_factory=set)
    lasts: set[Name] = field(default_factory=set)
    has_login: bool = False
    held: dict[str, set[str]] = field(default_factory=dict)  # login/loyalty/mobile/phone hashes


class Linker:
    """Union-find whose unions are refused when they would join clearly different people."""

    def __init__(self, nodes: list[Node], max_size: int, max_names: int) -> None:
        self.parent = list(range(len(nodes)))
        self.nodes = nodes
        self.max_size, self.max_names = max_size, max_names
        self.stats = dict.fromkeys(
            (
                "refused_size",
                "refused_names",
                "refused_exclusive",
                "ambiguous_keys",
                "joined_by_name",
            ),
            0,
        )

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, *, need_names: bool) -> bool:
        """Join two clusters unless a guard refuses; ``need_names`` asks for agreeing names."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        na, nb = self.nodes[ra], self.nodes[rb]
        if na.size + nb.size > self.max_size:
            self.stats["refused_size"] += 1
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
        k, g = self.nodes[keep], self.nodes[gone]
        k.size += g.size
        k.firsts |= g.firsts
        k.lasts |= g.lasts
        k.has_login |= g.has_login
        for kind, values in g.held.items():
            k.held.setdefault(kind, set()).update(values)
        return True

    def compatible(self, ra: int, rb: int) -> bool:
        na, nb = self.nodes[ra], self.nodes[rb]
        for xs, ys in ((na.firsts, nb.firsts), (na.lasts, nb.lasts)):
            if xs and ys and not _names_meet(xs, ys):
                return False
        return True

    def conflict(self, ra: int, rb: int) -> bool:
        """Different logins, loyalty cards or mobiles: two people, whatever else they share."""
        ha, hb = self.nodes[ra].held, self.nodes[rb].held
        return any(ha.get(k) and hb.get(k) and ha[k].isdisjoint(hb[k]) for k in EXCLUSIVE)

    def link_keys(
        self, keys: list[dict[str, str]], stored: dict[str, list[int]], order: list[str]
    ) -> None:
        """Every key type in ``order`` (strongest first): group batch records (``keys``: field
        -> key hash per record) and stored customers (``stored``: key hash -> nodes) on it."""
        for column in order:
            groups: dict[str, list[int]] = defaultdict(list)
            for i, ks in enumerate(keys):
                if column in ks:
                    groups[ks[column]].append(i)
            for kh, group in groups.items():
                group += stored.get(kh, [])
                if column in ("login_id", "loyalty_id"):
                    self.link_all(group)
                elif column == "cookie_id":
                    self.link_cookie(group)
                else:
                    self.link_guarded(group)

    def link_all(self, group: list[int]) -> None:
        """Strong keys (login, loyalty card): everyone sharing the key, subject to the caps."""
        for other in group[1:]:
            self.union(group[0], other, need_names=False)

    def link_cookie(self, group: list[int]) -> None:
        """A cookie joins the one person who logged in with it; shared devices link nobody."""
        logged = sorted({self.find(i) for i in group if self.nodes[i].has_login})
        if len(logged) > 1:
            self.stats["ambiguous_keys"] += 1
            return
        anchor = logged[0] if logged else group[0]
        for other in group:
            self.union(anchor, other, need_names=True)

    def link_by_name(self, named: list[tuple[int, tuple[str, str]]]) -> None:
        """Opt-in last resort for pieces that share no key: a full name (canonical first + last
        hashes) held by exactly two clusters joins them, unless the union guards refuse (e.g.
        different logins or mobiles). Three or more holders: a common name, several people."""
        holders: dict[tuple[str, str], set[int]] = defaultdict(set)
        for i, full in named:
            holders[full].add(self.find(i))
        for full in sorted(holders):
            roots = sorted({self.find(r) for r in holders[full]})
            if len(roots) == 2 and self.union(roots[0], roots[1], need_names=True):
                self.stats["joined_by_name"] += 1

    def link_guarded(self, group: list[int]) -> None:
        """E-mail or phone: merge only clusters whose names agree; nameless ones join the one
        named cluster on the key, and stay apart when the key is shared by several people."""
        roots = sorted({self.find(i) for i in group})
        named = [r for r in roots if self.nodes[r].firsts]
        unnamed = [r for r in roots if not self.nodes[r].firsts]
        buckets: list[int] = []
        for r in named:
            for b in buckets:
                if self.union(b, r, need_names=True):
                    break
            else:
                buckets.append(self.find(r))
        buckets = sorted({self.find(b) for b in buckets})
        if len(buckets) > 1 and unnamed:
            self.stats["ambiguous_keys"] += 1
            return
        anchor = buckets[0] if buckets else (unnamed[0] if unnamed else None)
        for r in unnamed:
            if anchor is not None:
                self.union(anchor, r, need_names=True)


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

"""The identity graph: one ``customer_id`` per person, persisted in SQL as salted hashes only.

Batch ``resolve`` clusters records (``features.linkage``) together with the stored customers
their keys touch, so a new batch joins or bridges customers and ids stay stable across re-runs.
The real-time path (``lookup``, ``link``) and ``map_identifiers`` are deterministic key lookups.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel
from sqlalchemy import Engine

from features import graph_store as gs
from features import normalize as nz
from features.identity_records import Record, prepare
from features.linkage import KEY_KINDS, Linker, Node, assign_ids, key_kind

# identifier field -> key type; the order is the lookup priority, strongest first
KEY_TYPES = KEY_KINDS
STRONG = ("login_id", "loyalty_id", "cookie_id")
VARIANT_CACHE = 100_000  # hashed variant sets of distinct names kept per graph (bounded)


def salted_hash(salt: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` under the identity salt (32 hex characters): how the
    graph stores keys, and how other stores keep an id they must not hold in the clear."""
    return hmac.digest(salt, f"{kind}:{value}".encode(), hashlib.sha256).hex()[:32]


class Identifiers(BaseModel):
    """Whatever a channel knows about the visitor; every field optional."""

    customer_id: str | None = None
    email: str | None = None
    phone: str | None = None
    loyalty_id: str | None = None
    login_id: str | None = None
    cookie_id: str | None = None


def canonical_identifiers(ids: Identifiers, region: str) -> dict[str, str]:
    """field -> canonical form of each usable identifier, strongest field first."""
    values = {f: nz.lenient_key(f, getattr(ids, f), region.upper()) for f in KEY_TYPES}
    return {f: v for f, v in values.items() if v is not None}


def identifier_hashes(ids: Identifiers, salt: str | bytes, region: str) -> dict[str, str]:
    """field -> salted hash of the identifier's canonical form, strongest field first: the
    graph's stored keys, so ``Ann@X.com `` and ``ann@x.com`` give one hash."""
    salt = salt.encode() if isinstance(salt, str) else salt
    values = canonical_identifiers(ids, region)
    return {f: salted_hash(salt, KEY_TYPES[f], v) for f, v in values.items()}


class IdentityGraph:
    """Persistent identity graph; identifiers are stored only as HMAC-SHA256 of canonical forms."""

    def __init__(
        self,
        engine: Engine,
        salt: str,
        region: str = "GB",
        *,
        max_cluster: int = 60,
        max_names: int = 2,
        name_only: bool = False,
    ) -> None:
        self.engine, self.region = engine, region.upper()
        self._salt = salt.encode()
        self.max_cluster, self.max_names = max_cluster, max_names
        self.name_only = name_only
        gs.ensure_schema(engine)
        self.last_stats: dict[str, int] = {}
        self._variants: dict[tuple[str, str], frozenset[str]] = {}  # names repeat: hash once

    def _hash(self, kind: str, value: str) -> str:
        return salted_hash(self._salt, kind, value)

    def salted(self, kind: str, value: str) -> str:
        """``salted_hash`` under this graph's salt."""
        return self._hash(kind, value)

    def record_hash(self, record_id: str) -> str:
        """The stored hash of a source record id (how splits and links name records)."""
        return self._hash("record", record_id.strip())

    @staticmethod
    def _key_type(field: str, value: str) -> str:
        """Stored key type: as the field, except that personal mobiles are told from landlines."""
        return key_kind(field, value)

    def _canonical(self, ids: Identifiers) -> dict[str, str]:
        return canonical_identifiers(ids, self.region)

    def key_hashes(self, ids: Identifiers) -> dict[str, str]:
        """The stored keys these identifiers would have, strongest first."""
        return identifier_hashes(ids, self._salt, self.region)

    # --- batch ---------------------------------------------------------------------------

    def resolve(self, frame: pd.DataFrame, *, lenient: bool = False) -> pd.DataFrame:
        """Cluster a batch of records into customers, joining/bridging stored ones; persist.

        Raises ``IdentityInputError`` (row and column named) on unusable input, unless
        ``lenient``: then bad values are dropped and listed in ``last_warnings``.
        """
        self.last_warnings: list[str] = []
        unusable: dict[str, int] = {}
        batch = prepare(frame, self.region, self.last_warnings if lenient else None, unusable)
        h = self._hash_batch(batch)
        with self.engine.connect() as conn:
            cols = (gs.records.c.record_hash, gs.records.c.customer_id)
            known = gs.fetch(conn, gs.records.c.record_hash, h["record"], *cols)
            all_keys = sorted({k for ks in h["keys"] for k in ks.values()})
            cols = (gs.keys.c.key_hash, gs.keys.c.customer_id)
            owners = gs.fetch(conn, gs.keys.c.key_hash, all_keys, *cols)
            touched = {c for _, c in known + owners}
            fulls = [(f, la) for f, la in zip(h["first"], h["last"], strict=True) if f and la]
            if self.name_only:
                touched |= gs.name_holders(conn, sorted(set(fulls)))
            info = gs.customer_info(conn, sorted(touched))
            stored_records = [rh for v in info.values() for rh in v["records"]]
            sides = gs.split_sides(conn, sorted(set(h["record"]) | set(stored_records)))
        linker, index = self._linker(batch, h, known, info, sides)

        stored_by_key: dict[str, list[int]] = defaultdict(list)
        for kh, cid in owners:
            stored_by_key[kh].append(index[cid])
        linker.link_keys(h["keys"], stored_by_key, list(KEY_TYPES), h["types"])
        if self.name_only:
            named = [(index[c], full) for c, v in info.items() for full in v["fulls"]]
            named += list(enumerate(zip(h["first"], h["last"], strict=True)))
            linker.link_by_name([(i, full) for i, full in named if full[0] and full[1]])

        created = {c: v["created"] for c, v in info.items()}
        ids, new_customers, merged = assign_ids(
            linker, h["record"], index, created, lambda rh: "C" + self._hash("customer", rh)[:12]
        )
        now = datetime.now(UTC)
        n = len(batch)
        record_rows, key_rows = self._rows(batch, h, ids)
        ref = [f"r:{rh}" for rh in h["record"]] + [f"c:{cid}" for cid in index]
        link_rows = [(ref[a], ref[b], rule) for a, b, rule in linker.links]
        with self.engine.begin() as conn:
            for old, new in merged:
                gs.merge_customer(conn, old, new, now)
            gs.write_batch(conn, new_customers, record_rows, key_rows, now)
            gs.write_links(conn, link_rows, now)
        self.last_stats = {
            "records": n,
            "customers": len(set(ids)),
            "new_customers": len(new_customers),
            "merged_customers": len(merged),
            "warnings": len(self.last_warnings),
            "unusable_values": dict(sorted(unusable.items())),
            "links": len(link_rows),
            **linker.stats,
        }
        return pd.DataFrame({"record_id": [r.record_id for r in batch], "customer_id": ids})

    def stored_rows(
        self, batch: list[Record], ids: list[str]
    ) -> tuple[list[dict[str, Any]], set[tuple[str, str, str]]]:
        """The record rows and (key, customer, type) rows of these records of customers
        ``ids``: how a graph built elsewhere (the batch engine) is stored like ``resolve``'s."""
        return self._rows(batch, self._hash_batch(batch), ids)

    def _rows(
        self, batch: list[Record], h: dict[str, list[Any]], ids: list[str]
    ) -> tuple[list[dict[str, Any]], set[tuple[str, str, str]]]:
        n = len(batch)
        variants = [" ".join(sorted(v)) if v else None for v in h["first_v"] + h["last_v"]]
        record_rows = [
            {
                "record_hash": rh,
                "customer_id": c,
                "first_hash": f,
                "last_hash": la,
                "first_variants": fv,
                "last_variants": lv,
                "record_id": r.record_id,
                "key_hashes": " ".join(f"{types[f]}:{k}" for f, k in ks.items()) or None,
            }
            for rh, c, f, la, fv, lv, r, ks, types in zip(
                h["record"],
                ids,
                h["first"],
                h["last"],
                variants[:n],
                variants[n:],
                batch,
                h["keys"],
                h["types"],
                strict=True,
            )
        ]
        key_rows = {
            (kh, c, types[f])
            for ks, types, c in zip(h["keys"], h["types"], ids, strict=True)
            for f, kh in ks.items()
        }
        return record_rows, key_rows

    def _hash_batch(self, batch: list[Record]) -> dict[str, list[Any]]:
        """Salted hashes of everything the linker and the tables need, per record."""

        def variants(kind: str, name: str | None, nicknames: bool) -> frozenset[str] | None:
            if not name:
                return None
            found = self._variants.get((kind, name))
            if found is None:
                if len(self._variants) >= VARIANT_CACHE:
                    self._variants.clear()
                found = frozenset(
                    self._hash(kind, v)[:12] for v in nz.name_variants(name, nicknames)
                )
                self._variants[(kind, name)] = found
            return found

        return {
            "record": [self._hash("record", r.record_id) for r in batch],
            "keys": [{f: self._hash(KEY_TYPES[f], v) for f, v in r.keys.items()} for r in batch],
            "types": [{f: self._key_type(f, v) for f, v in r.keys.items()} for r in batch],
            "first": [r.first and self._hash("first", nz.canonical_first(r.first)) for r in batch],
            "last": [r.last and self._hash("last", r.last) for r in batch],
            "first_v": [variants("first~", r.first, True) for r in batch],
            "last_v": [variants("last~", r.last, False) for r in batch],
        }

    def _linker(
        self,
        batch: list[Record],
        h: dict[str, list[Any]],
        known: list[tuple],
        info: dict,
        sides: dict[str, set[tuple[int, int]]],
    ) -> tuple[Linker, dict[str, int]]:
        """Nodes: one per batch record, then one per stored customer the batch touches; a
        stored record starts inside its customer, so re-runs keep their ids."""
        nodes = [
            Node(
                1,
                {(h["first_v"][i], r.first)} if r.first else set(),
                {(h["last_v"][i], r.last)} if r.last else set(),
                "login_id" in r.keys,
                {t: {h["keys"][i][f]} for f, t in h["types"][i].items() if t in gs.HELD},
                set(sides.get(h["record"][i], ())),
            )
            for i, r in enumerate(batch)
        ]
        index = {cid: len(nodes) + k for k, cid in enumerate(info)}
        nodes += [
            Node(
                v["size"],
                v["firsts"],
                v["lasts"],
                "login" in v["held"],
                v["held"],
                {s for rh in v["records"] for s in sides.get(rh, ())},
            )
            for v in info.values()
        ]
        linker = Linker(nodes, self.max_cluster, self.max_names)
        position = {rh: i for i, rh in enumerate(h["record"])}
        for rh, cid in known:
            i, c = position[rh], index[cid]
            linker.parent[i] = c
            nodes[i].size = 0
            nodes[c].firsts |= nodes[i].firsts  # plain names: rapidfuzz rather than variants
            nodes[c].lasts |= nodes[i].lasts
        return linker, index

    # --- real time -----------------------------------------------------------------------

    @staticmethod
    def _pick(owners: dict[str, set[str]]) -> str | None:
        """Strongest key that names exactly one customer (a household e-mail names two)."""
        for field in KEY_TYPES:
            if len(owners.get(field, ())) == 1:
                return next(iter(owners[field]))
        return None

    def lookup(self, ids: Identifiers) -> str | None:
        """Real-time: hash the canonical identifiers, one indexed query, strongest unique hit
        (a known ``customer_id`` wins, following recorded merges)."""
        with self.engine.connect() as conn:
            if ids.customer_id and (cid := gs.current_id(conn, ids.customer_id)):
                return cid
            return self._pick(gs.owners(conn, self.key_hashes(ids)))

    def lookup_many(self, many: list[Identifiers]) -> list[str | None]:
        """``lookup`` of many visitors on one connection: the given customer ids and the
        identifier hashes of all of them each fetched in one chunked query (a batch of
        decisions pays a few queries, not two per visitor)."""
        hashes = [self.key_hashes(ids) for ids in many]
        with self.engine.connect() as conn:
            given = gs.current_ids(conn, sorted({i.customer_id for i in many if i.customer_id}))
            needed = {
                h
                for ids, hs in zip(many, hashes, strict=True)
                if not (ids.customer_id and ids.customer_id in given)
                for h in hs.values()
            }
            holders = gs.key_owners(conn, sorted(needed))
        found: list[str | None] = []
        for ids, hs in zip(many, hashes, strict=True):
            if ids.customer_id and ids.customer_id in given:
                found.append(given[ids.customer_id])
            else:
                found.append(self._pick({f: holders[h] for f, h in hs.items() if h in holders}))
        return found

    def link(self, ids: Identifiers) -> str:
        """Look up, or create a customer; store keys nobody holds yet. A login or loyalty card
        naming other customers bridges them into the oldest, and so does a cookie that only
        an anonymous customer (no login) held: the cookie is now linked by a login."""
        values = self._canonical(ids)
        hashes = {f: self._hash(KEY_TYPES[f], v) for f, v in values.items()}
        if not hashes and not ids.customer_id:
            raise ValueError("identifiers: at least one usable identifier is required")
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            owners = gs.owners(conn, hashes)
            given = gs.current_id(conn, ids.customer_id) if ids.customer_id else None
            anchors = owners.get("login_id", set()) | owners.get("loyalty_id", set())
            anchors |= {given} if given else set()
            cookie = owners.get("cookie_id", set())
            if len(cookie) == 1 and (not anchors or not gs.has_login(conn, next(iter(cookie)))):
                anchors |= cookie
            ages = gs.created_at(conn, sorted(anchors))
            order = sorted(anchors, key=lambda c: (ages[c], c))
            for other in order[1:]:
                gs.merge_customer(conn, other, order[0], now)
            cid = order[0] if order else self._pick(owners)
            if cid is None:
                seed = min(hashes.values()) if hashes else self._hash("id", str(ids.customer_id))
                cid = "C" + self._hash("customer", seed)[:12]
                if gs.current_id(conn, cid) is None:
                    gs.write_batch(conn, [cid], [], set(), now)
            new = {f: v for f, v in values.items() if not owners.get(f)}
            gs.write_batch(
                conn, [], [], {(hashes[f], cid, self._key_type(f, v)) for f, v in new.items()}, now
            )
        return cid

    def person_keys(self, customer_id: str) -> tuple[str, list[str]]:
        """The id this customer goes by now (following recorded merges; the id itself when the
        graph does not know it) and every other key the person was known by: the ids merged
        into it and the salted hashes of the identifiers it holds."""
        with self.engine.connect() as conn:
            return gs.person_keys(conn, customer_id)

    def person_keys_many(self, customer_ids: list[str]) -> dict[str, tuple[str, list[str]]]:
        """``person_keys`` of many customers, in a few queries."""
        with self.engine.connect() as conn:
            return gs.person_keys_many(conn, list(dict.fromkeys(customer_ids)))

    def canonical_ids(self) -> dict[str, str]:
        """Every merged-away customer id -> the id its person goes by now (merge records are
        kept pointing at the survivor, so one step suffices)."""
        with self.engine.connect() as conn:
            return gs.merged_into(conn)

    def map_identifiers(self, df: pd.DataFrame) -> pd.Series:
        """customer_id per row (None when unknown), strongest identifier first; vectorised:
        each distinct value is normalised and hashed once, keys fetched in chunked queries."""
        result = pd.Series(None, index=df.index, dtype=object)
        with self.engine.connect() as conn:
            for field in KEY_TYPES:
                if field not in df.columns:
                    continue
                todo = result.isna() & df[field].notna()
                if not todo.any():
                    continue
                hashed = self.column_hashes(field, df.loc[todo, field])
                cols = (gs.keys.c.key_hash, gs.keys.c.customer_id)
                pairs = gs.fetch(conn, gs.keys.c.key_hash, sorted(set(hashed.dropna())), *cols)
                owner = pd.DataFrame(pairs, columns=["h", "c"], dtype=object)
                owner = owner[~owner["h"].duplicated(keep=False)].set_index("h")["c"]
                result.loc[todo] = hashed.map(owner).to_numpy()
        return result.where(result.notna(), None)

    def column_hashes(self, field: str, values: pd.Series) -> pd.Series:
        """The stored key hash of each value of an identifier column (NaN when blank or
        unusable); each distinct value is normalised and hashed once."""
        kind = KEY_TYPES[field]
        uniq = pd.Series(values.dropna().unique(), dtype=object)
        canonical = uniq.map(lambda v: nz.lenient_key(field, v, self.region))
        hashed = canonical.map(lambda c: c and self._hash(kind, c))
        return values.map(pd.Series(hashed.to_numpy(), index=uniq.to_numpy(), dtype=object))

    def stored_key_hashes(self, customer_ids: list[str]) -> list[str]:
        """Every stored key hash of these customers (what erasure matches source rows by)."""
        with self.engine.connect() as conn:
            rows = gs.fetch(conn, gs.keys.c.customer_id, customer_ids, gs.keys.c.key_hash)
        return sorted({h for (h,) in rows})

    def erase(self, customer_id: str) -> int:
        """Right to erasure: delete every stored row of this customer; rows deleted."""
        with self.engine.begin() as conn:
            return gs.erase_customer(conn, gs.current_id(conn, customer_id) or customer_id)


def fresh_graph(path: Path, settings: Any) -> IdentityGraph:
    """A new, empty graph in its own SQLite file (an earlier one at ``path`` is replaced):
    where a batch is resolved unless it is to be merged into the home's graph."""
    from sqlalchemy import create_engine

    for old in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
        old.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return IdentityGraph(
        create_engine(f"sqlite:///{path}"),
        settings.identity_salt,
        settings.region,
        max_cluster=settings.identity_max_cluster,
        max_names=settings.identity_max_names,
        name_only=settings.identity_link_by_name,
    )


def graph_for(settings: Any) -> IdentityGraph:
    """The identity graph in the ledger database named by the settings."""
    from nextbest.db import engine_for

    return IdentityGraph(
        engine_for(settings.ledger_db_url),
        settings.identity_salt,
        settings.region,
        max_cluster=settings.identity_max_cluster,
        max_names=settings.identity_max_names,
        name_only=settings.identity_link_by_name,
    )

"""Blocking for batch identity resolution, written once as SQL that DuckDB and Spark both run,
and the per-block linking both engines call.

A block is a connected component of records sharing any canonical identifier: no rule can link
records in different blocks, so each block is linked on its own and memory is bounded by the
largest block. Components come from min-label propagation over a long ``(rid, key)`` table:
each round a record takes the smallest label among the records sharing any of its keys. The
rounds needed are the block's diameter in key hops (a handful on identity data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from features.identity_chunks import NAME_FIELDS
from features.identity_records import KEY_FIELDS, Record
from features.linkage import link_block

# a record as the per-block linker reads it, in rid order within its block
ROW_COLUMNS = ("rid", "record_id", *NAME_FIELDS, *KEY_FIELDS)


class SqlRunner(Protocol):
    """What blocking needs of an engine: name a query's result, and read one number."""

    def materialise(self, name: str, select_sql: str) -> None: ...

    def scalar(self, select_sql: str) -> int: ...


def keys_sql(source: str) -> str:
    """Long table of (rid, key): one row per usable identifier of each record."""
    parts = [
        f"SELECT rid, '{field}:' || {field} AS key FROM {source} WHERE {field} IS NOT NULL"
        for field in KEY_FIELDS
    ]
    return "\nUNION ALL\n".join(parts)


def _round_sql(labels: str) -> str:
    """One propagation round: each record takes the smallest label of its key groups."""
    return f"""
        WITH g AS (
            SELECT k.key, min(l.label) AS m FROM block_keys k JOIN {labels} l ON k.rid = l.rid
            GROUP BY k.key
        ),
        best AS (
            SELECT k.rid, min(g.m) AS m FROM block_keys k JOIN g ON k.key = g.key GROUP BY k.rid
        )
        SELECT l.rid, least(l.label, coalesce(b.m, l.label)) AS label
        FROM {labels} l LEFT JOIN best b ON l.rid = b.rid
    """


def compute_blocks(
    run: SqlRunner,
    source: str,
    *,
    max_rounds: int = 100,
    on_round: Callable[[int, int], None] | None = None,
) -> int:
    """Materialise ``blocks`` (rid, block, size) from the records table ``source`` (``rid``
    plus the KEY_FIELDS columns in canonical form). Returns the propagation rounds used."""
    run.materialise("block_keys", keys_sql(source))
    run.materialise("labels_0", f"SELECT rid, rid AS label FROM {source}")
    rounds = 0
    while rounds < max_rounds:
        current, following = f"labels_{rounds % 2}", f"labels_{(rounds + 1) % 2}"
        run.materialise(following, _round_sql(current))
        rounds += 1
        changed = run.scalar(
            f"SELECT count(*) FROM {current} a JOIN {following} b ON a.rid = b.rid "
            "WHERE a.label <> b.label"
        )
        if on_round:
            on_round(rounds, changed)
        if changed == 0:
            break
    else:
        raise RuntimeError(f"blocking did not converge in {max_rounds} rounds")
    final = f"labels_{rounds % 2}"
    run.materialise(
        "blocks",
        f"SELECT rid, label AS block, count(*) OVER (PARTITION BY label) AS size FROM {final}",
    )
    return rounds


def link_rows(rows: list[tuple], max_size: int, max_names: int) -> list[int]:
    """Cluster of each record of one block (the smallest ``rid`` in its cluster), by the
    rules; ``rows`` are ``(rid, record_id, first, last, *KEY_FIELDS)`` in rid order."""
    return link_rows_with_links(rows, max_size, max_names)[0]


def link_rows_with_links(
    rows: list[tuple], max_size: int, max_names: int
) -> tuple[list[int], list[tuple[int, int, str]]]:
    """``link_rows`` plus every union made, as ``(rid, rid, rule)``: what a graph built from
    the engine persists so a steward can ask why records were joined."""
    records = [
        Record(rid_id, {f: v for f, v in zip(KEY_FIELDS, keys, strict=True) if v}, first, last)
        for _, rid_id, first, last, *keys in rows
    ]
    made = link_block(records, max_size=max_size, max_names=max_names)
    smallest: dict[int, int] = {}
    for (rid, *_), label in zip(rows, made.labels, strict=True):
        smallest.setdefault(label, rid)  # rows come in rid order: the first is the smallest
    links = [(rows[a][0], rows[b][0], rule) for a, b, rule in made.links]
    return [smallest[label] for label in made.labels], links

"""A fresh identity graph built by the batch engine, so ``identity resolve`` on a big file is
bounded by the largest block and one write batch, not by the input.

The engine (``features.identity_batch``) clusters the records in DuckDB; ``write_graph`` then
streams its tables into the graph in batches: customer ids as ``IdentityGraph.resolve`` names
them in a fresh graph ("C" + salted hash of the cluster's smallest record hash), the records
and keys as it stores them, and every union with its rule, so ``identity explain`` and
``identity split`` work on the result as on a graph ``resolve`` wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import insert

from features import graph_store as gs
from features.identity import IdentityGraph
from features.identity_batch import LINKS_FILE, Progress, resolve_csv
from features.identity_chunks import NAME_FIELDS
from features.identity_records import KEY_FIELDS, IdentityInputError, Record, prepare
from features.schema import IDENTITY_INPUT_COLUMNS

WRITE_ROWS = 20_000  # records hashed and inserted per transaction


def _batches(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[dict[str, list[Any]]]:
    for batch in con.sql(sql).to_arrow_reader(WRITE_ROWS):
        yield batch.to_pydict()


def _spill(path: Path, schema: pa.Schema, rows: Iterator[dict[str, list[Any]]]) -> None:
    """Write computed columns to Parquet while reading: DuckDB reads them back by name."""
    with pq.ParquetWriter(path, schema) as writer:
        for columns in rows:
            writer.write_table(pa.table(columns, schema=schema))


def write_graph(
    graph: IdentityGraph,
    con: duckdb.DuckDBPyConnection,
    tmp: Path,
    out: Path,
    progress: Progress | None = None,
) -> int:
    """Write ``out`` (record_id, customer_id in input order) and the graph from the engine's
    ``records``/``resolved`` tables and links file; returns the links written."""
    now = datetime.now(UTC)
    hashes, ids = tmp / "record_hashes.parquet", tmp / "customer_ids.parquet"
    _spill(
        hashes,
        pa.schema([("rid", pa.int64()), ("record_hash", pa.string())]),
        (
            {"rid": b["rid"], "record_hash": [graph.record_hash(r) for r in b["record_id"]]}
            for b in _batches(con, "SELECT rid, record_id FROM records")
        ),
    )
    smallest = f"""SELECT r.customer_id AS leader, min(h.record_hash) AS m FROM resolved r
        JOIN read_parquet('{hashes}') h ON r.rid = h.rid GROUP BY r.customer_id"""
    _spill(
        ids,
        pa.schema([("leader", pa.string()), ("cid", pa.string())]),
        (
            {"leader": b["leader"], "cid": ["C" + graph.salted("customer", m)[:12] for m in b["m"]]}
            for b in _batches(con, smallest)
        ),
    )
    with graph.engine.begin() as conn:
        for b in _batches(con, f"SELECT cid FROM read_parquet('{ids}')"):
            conn.execute(
                insert(gs.customers), [{"customer_id": c, "created_at": now} for c in b["cid"]]
            )
    con.execute(
        f"""CREATE TABLE fresh AS SELECT r.rid, r.record_id, c.cid FROM resolved r
            JOIN read_parquet('{ids}') c ON r.customer_id = c.leader"""
    )
    con.execute(
        "COPY (SELECT record_id, cid AS customer_id FROM fresh ORDER BY rid) "
        f"TO '{out}' (FORMAT CSV, HEADER)"
    )
    columns = ", ".join(f"x.{c}" for c in (*NAME_FIELDS, *KEY_FIELDS))
    done = 0
    for b in _batches(
        con, f"SELECT f.cid, f.record_id, {columns} FROM fresh f JOIN records x ON f.rid = x.rid"
    ):
        batch = [
            Record(
                rid,
                {k: b[k][i] for k in KEY_FIELDS if b[k][i]},
                b["first_name"][i],
                b["last_name"][i],
            )
            for i, rid in enumerate(b["record_id"])
        ]
        record_rows, key_rows = graph.stored_rows(batch, b["cid"])
        with graph.engine.begin() as conn:
            gs.write_batch(conn, [], record_rows, key_rows, now)
        done += len(batch)
        if progress:
            progress("write graph", done)
    links = 0
    refs = f"""SELECT 'r:' || a.record_hash AS a, 'r:' || b.record_hash AS b, l.rule
        FROM read_parquet('{tmp / LINKS_FILE}') l
        JOIN read_parquet('{hashes}') a ON l.rid_a = a.rid
        JOIN read_parquet('{hashes}') b ON l.rid_b = b.rid"""
    for b in _batches(con, refs):
        with graph.engine.begin() as conn:
            gs.write_links(conn, list(zip(b["a"], b["b"], b["rule"], strict=True)), now)
        links += len(b["a"])
    return links


class Problems:
    """Unusable values and records without identifiers, described as ``prepare`` describes
    them (row numbered from 1 in the whole file): the first few kept, all counted; with
    ``strict`` the first one is raised."""

    def __init__(self, region: str, strict: bool, keep: int) -> None:
        self.region, self.strict, self.keep = region, strict, keep
        self.shown: list[str] = []
        self.count = 0

    def __call__(self, raw: pd.DataFrame, canonical: pd.DataFrame, before: int) -> None:
        ids = canonical["record_id"]
        if (ids == "").any():
            row = int((ids == "").to_numpy().argmax())
            raise IdentityInputError(before + row + 1, None, "record_id", "is empty")
        text = raw[[c for c in IDENTITY_INPUT_COLUMNS if c != "record_id"]].fillna("")
        given = text.apply(lambda s: s.astype(str).str.strip().ne(""))
        bad = given & canonical[given.columns].isna()
        no_keys = canonical[list(KEY_FIELDS)].isna().all(axis=1)
        self.count += int(bad.to_numpy().sum()) + int(no_keys.sum())
        flagged = (bad.any(axis=1) | no_keys).to_numpy().nonzero()[0]
        for row in flagged:
            if len(self.shown) >= self.keep and not self.strict:
                break
            self._describe(raw.iloc[[row]], before + int(row) + 1)

    def _describe(self, one: pd.DataFrame, row_no: int) -> None:
        """``prepare`` on one row gives its messages; renumbered to the row in the file."""
        rid = str(one["record_id"].iloc[0]).strip()
        here, there = f"row 1 (record_id {rid}), ", f"row {row_no} (record_id {rid}), "
        if self.strict:
            try:
                prepare(one, self.region)
            except IdentityInputError as exc:
                raise IdentityInputError(
                    row_no, rid, exc.column, str(exc).removeprefix(f"{here}column {exc.column}: ")
                ) from exc
        found: list[str] = []
        prepare(one, self.region, found)
        self.shown += [w.replace(here, there, 1) for w in found][: self.keep - len(self.shown)]


def resolve_fresh(
    graph: IdentityGraph,
    settings: Any,
    csv: Path,
    chunks: Iterator[pd.DataFrame],
    out: Path,
    *,
    strict: bool = False,
    warnings_kept: int = 10,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Resolve ``chunks`` (the checked records of ``csv``) with the DuckDB batch engine into
    the empty ``graph`` and ``out``; returns the summary and the first warnings."""
    problems = Problems(settings.region, strict, warnings_kept)
    written: dict[str, int] = {}

    def finish(con: duckdb.DuckDBPyConnection, tmp: Path) -> None:
        written["links"] = write_graph(graph, con, tmp, out, progress)

    out.parent.mkdir(parents=True, exist_ok=True)
    summary = resolve_csv(
        csv,
        out,
        region=settings.region,
        max_size=settings.identity_max_cluster,
        max_names=settings.identity_max_names,
        memory_limit=settings.identity_batch_memory,
        progress=progress,
        chunks=chunks,
        on_chunk=problems,
        finish=finish,
    )
    stats = {
        "records": summary.records,
        "customers": summary.clusters,
        "new_customers": summary.clusters,
        "merged_customers": 0,
        "warnings": problems.count,
        "unusable_values": {k: v for k, v in sorted(summary.unusable_values.items()) if v},
        "links": written["links"],
        "engine": "duckdb",
        "blocks": summary.blocks,
        "largest_block": summary.largest_block,
        "seconds": summary.seconds,
    }
    return stats, problems.shown

"""Batch identity resolution whose memory is bounded by the largest block, not the input.

The CSV is read in chunks; each chunk is normalised (each distinct value parsed once) and
appended to a DuckDB table on disk. Blocks (``features.identity_blocks``) are computed in SQL,
then the records are streamed back ordered by block and each block of two or more records is
linked by the deterministic rules (``link_block``). Singletons never reach Python again.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from features.identity_blocks import ROW_COLUMNS, compute_blocks, link_rows_with_links
from features.identity_chunks import NAME_FIELDS, normalise_chunk, parsers
from features.identity_records import KEY_FIELDS, IdentityInputError

CANONICAL_COLUMNS = ("record_id", *KEY_FIELDS, *NAME_FIELDS)
Progress = Callable[[str, int], None]  # (stage, records done)
# (raw chunk, its canonical form, rows before it): sees each chunk as it is normalised
OnChunk = Callable[[pd.DataFrame, pd.DataFrame, int], None]
# (connection, work folder) once ``resolved`` (rid, record_id, customer_id) and the links file
# (``LINKS_FILE``: rid_a, rid_b, rule) exist: writes the output instead of the default copy
Finish = Callable[[duckdb.DuckDBPyConnection, Path], None]
LINKS_FILE = "links.parquet"


class BatchSummary(BaseModel):
    """What a batch run did: sizes, the blocks' shape, unusable values, time per stage."""

    records: int
    clusters: int
    blocks: int
    largest_block: int
    rounds: int
    unusable_values: dict[str, int]
    records_without_identifiers: int
    seconds: dict[str, float]
    out: str


def read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The CSV as string chunks; an unreadable file or a missing column is one clear error."""
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows)
        yield from reader
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise IdentityInputError(None, None, "--csv", f"cannot read {path} ({exc})") from exc


class DuckRunner:
    """``SqlRunner`` on a DuckDB connection: results become tables (spilled to disk)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def materialise(self, name: str, select_sql: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TABLE {name} AS {select_sql}")

    def scalar(self, select_sql: str) -> int:
        return int(self.con.execute(select_sql).fetchall()[0][0])


def link_blocks(
    batches: Iterator[pa.RecordBatch], max_size: int, max_names: int
) -> Iterator[tuple[list[int], list[int], list[tuple[int, int, str]]]]:
    """(rids, clusters, links) per batch of records ordered by (block, rid); a block cut by a batch
    boundary is carried over, so at most one batch plus the largest block is in memory."""
    carry: list[tuple] = []
    carry_block = None
    for batch in batches:
        columns = [batch.column(c).to_pylist() for c in ROW_COLUMNS]
        blocks = batch.column("block").to_pylist()
        rids: list[int] = []
        clusters: list[int] = []
        links: list[tuple[int, int, str]] = []
        for block, row in zip(blocks, zip(*columns, strict=True), strict=True):
            if block != carry_block and carry:
                rids += [r[0] for r in carry]
                done, made = link_rows_with_links(carry, max_size, max_names)
                clusters += done
                links += made
                carry = []
            carry.append(row)
            carry_block = block
        if rids:
            yield rids, clusters, links
    if carry:
        yield [r[0] for r in carry], *link_rows_with_links(carry, max_size, max_names)


def _open(workdir: Path, memory_limit: str, threads: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(workdir / "identity_batch.duckdb"))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{workdir / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def resolve_csv(
    path: Path,
    out: Path,
    *,
    region: str,
    max_size: int,
    max_names: int,
    chunk_rows: int = 100_000,
    memory_limit: str = "1GB",
    threads: int = 2,
    workdir: Path | None = None,
    progress: Progress | None = None,
    chunks: Iterator[pd.DataFrame] | None = None,
    on_chunk: OnChunk | None = None,
    finish: Finish | None = None,
) -> BatchSummary:
    """Resolve the records of a CSV (``IDENTITY_INPUT_COLUMNS``) into clusters; write ``out``
    (CSV or Parquet by suffix) with ``record_id, customer_id``, the id being the record_id of
    the cluster's first record. Bad values are counted and dropped, never fatal.
    ``chunks`` replaces reading ``path`` (a caller that checked the file itself); ``on_chunk``
    and ``finish`` let a caller see the chunks and write the result its own way."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        con = _open(Path(tmp), memory_limit, threads)
        try:
            return _resolve(
                con,
                Path(tmp),
                path,
                out,
                region,
                max_size,
                max_names,
                chunks if chunks is not None else read_chunks(path, chunk_rows),
                progress,
                on_chunk,
                finish,
            )
        finally:
            con.close()


def _resolve(
    con: duckdb.DuckDBPyConnection,
    tmp: Path,
    path: Path,
    out: Path,
    region: str,
    max_size: int,
    max_names: int,
    chunks: Iterator[pd.DataFrame],
    progress: Progress | None,
    on_chunk: OnChunk | None,
    finish: Finish | None,
) -> BatchSummary:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    columns = ", ".join(f"{c} VARCHAR" for c in CANONICAL_COLUMNS)
    con.execute(f"CREATE TABLE records (rid BIGINT, {columns})")
    n, unusable = 0, dict.fromkeys(parsers(region), 0)
    for chunk in chunks:
        canonical, bad = normalise_chunk(chunk, region)
        if on_chunk:
            on_chunk(chunk, canonical, n)
        canonical.insert(0, "rid", np.arange(n, n + len(canonical), dtype=np.int64))
        con.register("chunk", canonical)
        con.execute("INSERT INTO records BY NAME SELECT * FROM chunk")
        con.unregister("chunk")
        n += len(canonical)
        unusable = {k: unusable[k] + bad[k] for k in unusable}
        if progress:
            progress("normalise", n)
    if n == 0:
        raise IdentityInputError(None, None, "--csv", f"{path} has no records")
    dup = con.execute(
        "SELECT record_id, count(*) FROM records GROUP BY record_id HAVING count(*) > 1 LIMIT 1"
    ).fetchall()
    if dup:
        raise IdentityInputError(
            None, None, "record_id", f"{dup[0][0]!r} appears {dup[0][1]} times"
        )
    seconds["normalise"] = time.perf_counter() - start

    start = time.perf_counter()
    rounds = compute_blocks(DuckRunner(con), "records")
    blocks, largest = con.execute("SELECT count(DISTINCT block), max(size) FROM blocks").fetchall()[
        0
    ]
    seconds["block"] = time.perf_counter() - start

    start = time.perf_counter()
    clusters_file = tmp / "clusters.parquet"
    schema = pa.schema([("rid", pa.int64()), ("cluster", pa.int64())])
    link_schema = pa.schema([("rid_a", pa.int64()), ("rid_b", pa.int64()), ("rule", pa.string())])
    query = (
        "SELECT r.*, b.block FROM records r JOIN blocks b ON r.rid = b.rid "
        "WHERE b.size > 1 ORDER BY b.block, r.rid"
    )
    reader = con.sql(query).to_arrow_reader(50_000)
    done = 0
    with (
        pq.ParquetWriter(clusters_file, schema) as writer,
        pq.ParquetWriter(tmp / LINKS_FILE, link_schema) as link_writer,
    ):
        for rids, clusters, links in link_blocks(reader, max_size, max_names):
            writer.write_table(pa.table({"rid": rids, "cluster": clusters}, schema=schema))
            a, b, rule = zip(*links, strict=True) if links else ((), (), ())
            columns = {"rid_a": list(a), "rid_b": list(b), "rule": list(rule)}
            link_writer.write_table(pa.table(columns, schema=link_schema))
            done += len(rids)
            if progress:
                progress("link", done)
    seconds["link"] = time.perf_counter() - start

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"""CREATE TABLE resolved AS
            WITH c AS (
                SELECT r.rid, r.record_id, coalesce(l.cluster, r.rid) AS cluster
                FROM records r LEFT JOIN read_parquet('{clusters_file}') l ON r.rid = l.rid
            )
            SELECT c.rid, c.record_id, f.record_id AS customer_id
            FROM c JOIN records f ON f.rid = c.cluster"""
    )
    if finish is not None:
        finish(con, tmp)
    else:
        fmt = "FORMAT PARQUET" if out.suffix == ".parquet" else "FORMAT CSV, HEADER"
        con.execute(
            f"COPY (SELECT record_id, customer_id FROM resolved ORDER BY rid) TO '{out}' ({fmt})"
        )
    clusters_n = con.execute("SELECT count(DISTINCT customer_id) FROM resolved").fetchall()[0][0]
    no_ids = con.execute(
        "SELECT count(*) FROM records WHERE " + " AND ".join(f"{f} IS NULL" for f in KEY_FIELDS)
    ).fetchall()[0][0]
    seconds["write"] = time.perf_counter() - start
    return BatchSummary(
        records=n,
        clusters=int(clusters_n),
        blocks=int(blocks),
        largest_block=int(largest),
        rounds=rounds,
        unusable_values=unusable,
        records_without_identifiers=int(no_ids),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        out=str(out),
    )


def run_batch(settings: Any, path: Path, out: Path, progress: Progress | None = None) -> dict:
    """Batch resolution on the engine the settings name (``identity_batch_engine``): DuckDB in
    process by default, Spark in local mode for the scale-out path (pyspark and Java needed).
    Spark writes ``out`` as a Parquet folder."""
    options = dict(
        region=settings.region,
        max_size=settings.identity_max_cluster,
        max_names=settings.identity_max_names,
    )
    if settings.identity_batch_engine == "duckdb":
        summary = resolve_csv(
            path, out, memory_limit=settings.identity_batch_memory, progress=progress, **options
        )
        return {"engine": "duckdb", **summary.model_dump()}
    from features.identity_spark import local_session, resolve_spark

    spark = local_session()
    try:
        return {"engine": "spark", **resolve_spark(spark, path, out, **options).model_dump()}
    finally:
        spark.stop()

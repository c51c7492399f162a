"""The batch engine on Spark: the same normalisation, blocking SQL and per-block rules.

For record sets one machine cannot hold. Records are normalised by ``normalise_chunk`` in
``mapInPandas``, blocked by ``features.identity_blocks`` (the SQL DuckDB runs locally), and
each block is linked by ``link_rows`` in ``applyInPandas``. Local mode binds to 127.0.0.1 and
starts no UI; Spark sends no usage data.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from features.identity_blocks import ROW_COLUMNS, compute_blocks, link_rows
from features.identity_chunks import NAME_FIELDS, normalise_chunk
from features.identity_records import KEY_FIELDS, IdentityInputError
from features.schema import IDENTITY_INPUT_COLUMNS

CANONICAL = ", ".join(f"{c} string" for c in ("record_id", *KEY_FIELDS, *NAME_FIELDS))


class SparkSummary(BaseModel):
    """What a Spark batch run did."""

    records: int
    clusters: int
    blocks: int
    largest_block: int
    rounds: int
    out: str


def local_session(threads: int = 2, workdir: Path | None = None) -> Any:
    """A local-mode SparkSession listening on 127.0.0.1 only, without the web UI."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("nextbest-identity")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(threads))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if workdir is not None:
        builder = builder.config("spark.local.dir", str(workdir))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkRunner:
    """``SqlRunner`` on Spark: each result is checkpointed and named as a temporary view."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def materialise(self, name: str, select_sql: str) -> None:
        self.spark.sql(select_sql).localCheckpoint(eager=True).createOrReplaceTempView(name)

    def scalar(self, select_sql: str) -> int:
        return int(self.spark.sql(select_sql).collect()[0][0])


def resolve_spark(
    spark: Any, path: Path, out: Path, *, region: str, max_size: int, max_names: int
) -> SparkSummary:
    """Resolve a records CSV on Spark; write ``out`` (a Parquet folder) with ``record_id,
    customer_id``, the id being the record_id of the cluster's first record, as locally."""
    from pyspark.sql import functions as F

    try:
        header = list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise IdentityInputError(None, None, "--csv", f"cannot read {path} ({exc})") from exc
    missing = [c for c in IDENTITY_INPUT_COLUMNS if c not in header]
    if missing:
        raise IdentityInputError(None, None, ", ".join(missing), "missing from the input")
    schema = ", ".join(f"`{c}` string" for c in header)  # every column as text, as locally
    raw = spark.read.csv(str(path), header=True, schema=schema).select(*IDENTITY_INPUT_COLUMNS)

    def normalise(frames: Any) -> Any:
        for frame in frames:
            yield normalise_chunk(frame, region)[0]

    records = raw.mapInPandas(normalise, CANONICAL).withColumn(
        "rid", F.monotonically_increasing_id()
    )
    records.localCheckpoint(eager=True).createOrReplaceTempView("records")
    run = SparkRunner(spark)
    rounds = compute_blocks(run, "records")

    def link(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.sort_values("rid")
        rows = list(frame[list(ROW_COLUMNS)].itertuples(index=False, name=None))
        return pd.DataFrame({"rid": frame["rid"], "cluster": link_rows(rows, max_size, max_names)})

    linked = (
        spark.sql(
            "SELECT r.*, b.block FROM records r JOIN blocks b ON r.rid = b.rid WHERE b.size > 1"
        )
        .groupBy("block")
        .applyInPandas(link, "rid long, cluster long")
    )
    linked.localCheckpoint(eager=True).createOrReplaceTempView("clusters")
    resolved = spark.sql(
        """SELECT c.rid, c.record_id, f.record_id AS customer_id FROM (
               SELECT r.rid, r.record_id, coalesce(l.cluster, r.rid) AS cluster
               FROM records r LEFT JOIN clusters l ON r.rid = l.rid
           ) c JOIN records f ON f.rid = c.cluster"""
    )
    resolved.orderBy("rid").select("record_id", "customer_id").write.mode("overwrite").parquet(
        str(out)
    )
    shape = spark.sql("SELECT count(*), count(DISTINCT block), max(size) FROM blocks").collect()[0]
    clusters = spark.read.parquet(str(out)).select("customer_id").distinct().count()
    return SparkSummary(
        records=int(shape[0]),
        clusters=int(clusters),
        blocks=int(shape[1]),
        largest_block=int(shape[2]),
        rounds=rounds,
        out=str(out),
    )

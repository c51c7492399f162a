"""The scale-out path: the batch engine's blocking SQL and rules on Spark in local mode."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from features.identity_batch import resolve_csv
from features.identity_messy import messy_records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("pyspark") is None, reason="pyspark is not installed"
    ),
    pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (openjdk-17)"),
]


def groups(frame: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(g) for _, g in frame.groupby("customer_id")["record_id"]}


@pytest.mark.timeout(900)
def test_spark_local_mode_gives_the_duckdb_engines_clusters(tmp_path: Path) -> None:
    from features.identity_spark import local_session, resolve_spark

    csv = tmp_path / "records.csv"
    messy_records(150, seed=11).to_csv(csv, index=False)
    options = dict(region="DE", max_size=60, max_names=2)
    local = resolve_csv(csv, tmp_path / "duckdb.csv", **options)
    spark = local_session(threads=1, workdir=tmp_path)
    try:
        conf = spark.sparkContext.getConf()
        assert conf.get("spark.driver.host") == "127.0.0.1"
        assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
        assert conf.get("spark.ui.enabled") == "false"
        summary = resolve_spark(spark, csv, tmp_path / "spark", **options)
    finally:
        spark.stop()
    got = pd.read_parquet(tmp_path / "spark")
    expected = pd.read_csv(tmp_path / "duckdb.csv", dtype=str)
    assert groups(got) == groups(expected)
    assert (summary.records, summary.clusters, summary.blocks, summary.largest_block) == (
        local.records,
        local.clusters,
        local.blocks,
        local.largest_block,
    )
    assert summary.largest_block > 2  # the rules ran on real blocks, not singletons only

"""``bench batch``: the synthetic population reads back through the service's own read path,
and a tiny run produces every figure with sane values (the figures are not judged here)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import population as pop
from nextbest.settings import Settings
from serving.stages import STAGES

END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path).ensure_dirs()


def test_synthetic_profiles_read_back_through_the_feature_reader(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features.identity import Identifiers, graph_for
    from features.store import get_store
    from serving.deps import _features

    monkeypatch.setattr(pop, "CHUNK", 300)
    n = pop.CHUNK + 200  # two chunks: the second is seeded by its own start
    written = pop.write_profiles(settings, n, END)
    pop.register(settings, n)
    views = pop.stored_views(get_store(settings))
    names = [f.name for v in views for f in v.features]
    assert written["rows"] == n * len(names) and written["customers"] == n

    picks = [0, 1, pop.CHUNK - 1, pop.CHUNK, n - 1]
    ids = [pop.customer_ids(i, i + 1)[0] for i in picks]
    rows = _features(settings).read_many([*ids, pop.customer_ids(n, n + 1)[0]], now=END)
    for i, cid, row in zip(picks, ids, rows, strict=False):
        start = 0 if i < pop.CHUNK else pop.CHUNK
        columns = pop.synthetic_columns(views, start, min(start + pop.CHUNK, n), END)
        assert {k: row[k] for k in names} == {k: columns[k][i - start] for k in names}, cid
        assert row["customer_id"] == cid
    assert not set(names) & set(rows[-1])  # not written: no stored feature

    graph = graph_for(settings)
    assert graph.lookup(Identifiers(customer_id=ids[-1])) == ids[-1]
    assert graph.lookup(Identifiers(customer_id=pop.customer_ids(n, n + 1)[0])) is None


def test_a_second_write_replaces_rows_and_keeps_feasts_indexes(settings: Settings) -> None:
    pop.write_profiles(settings, 50, END)
    pop.write_profiles(settings, 50, END + timedelta(days=1))
    conn = sqlite3.connect(settings.feature_dir / "online.db")
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    indexes = {i for (i,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert tables and all(f"{t}_ek" in indexes for t in tables)
    profile = next(t for t in tables if t.endswith("customer_profile"))
    count, stamps = conn.execute(
        f'SELECT count(DISTINCT entity_key), group_concat(DISTINCT event_ts) FROM "{profile}"'
    ).fetchone()  # noqa: E501
    assert (count, stamps) == (50, "2026-03-02 12:00:00")


def test_synthetic_values_refuse_an_unknown_type() -> None:
    import numpy as np
    from feast.types import Bytes

    with pytest.raises(TypeError, match="blob: no synthetic values for"):
        pop._column(Bytes, "blob", 3, np.random.default_rng(0), END)


@pytest.mark.slow
def test_a_tiny_run_produces_every_figure() -> None:
    from nextbest.cli import app

    args = ["bench", "batch", "--customers", "500", "--sizes", "200,500", "--batches", "1,100",
            "--per-batch", "100", "--http-decisions", "300", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"customers", "channel", "models", "population", "batches",
                        "population_run", "http", "runs", "goals"}  # fmt: skip
    assert out["population"]["customers"] == 500 and out["population"]["rows_per_s"] > 0
    runs = {**out["batches"], "whole": out["population_run"]}
    assert set(out["batches"]) == {"1", "100"}
    for name, f in runs.items():
        assert f["decisions"] == (500 if name == "whole" else 100), name
        assert f["fallback_share"] == 0.0, name  # the models and bandit decided, not fallbacks
        assert f["ratio_to_floor"] > 0 and f["floor"]["reads_per_s"] > 0, name
        assert set(f["stages_us_per_decision"]) == set(STAGES), name
        assert sum(f["stages_us_per_decision"].values()) > 0, name
    http = out["http"]
    assert (http["batch"], http["decisions"], http["errors"]) == (100, 200, 0)
    assert http["decisions_per_s"] > 0 and http["ratio_to_floor"] > 0
    assert set(out["runs"]) == {"200", "500"}
    for n, f in out["runs"].items():
        assert f["customers"] == f["decisions"] == int(n)
        assert f["run_seconds"] > 0 and f["startup_seconds"] > 0 and f["peak_rss_mib"] > 50
    assert list(out["goals"]) == ["in_process>=20000/s"]

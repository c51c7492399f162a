"""`identity resolve` into a fresh graph through the batch engine: the graph the in-memory
resolver writes, row for row, and a steward can explain and split it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from features import graph_store as gs
from features.identity import IdentityGraph
from features.identity_messy import messy_records
from features.schema import IDENTITY_INPUT_COLUMNS
from nextbest import cli_features
from nextbest.cli import app

runner = CliRunner()
SALT = "nextbest-dev-salt"  # the settings' default, which the CLI's fresh graph uses


def resolve(src: Path, out: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(
        app, ["identity", "resolve", "--region", "DE", "--csv", str(src), "--out", str(out), *args]
    )
    return result.exit_code, result.stdout, result.stderr


def table(engine, t, *drop: str) -> set[tuple]:  # noqa: ANN001 - an Engine and a Table
    cols = [c for c in t.c if c.name not in drop]
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(select(*cols))}


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return messy_records(1500, seed=3)[list(IDENTITY_INPUT_COLUMNS)]


def test_fresh_graph_equals_the_in_memory_resolvers(
    private_home: Path, records: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_features, "CHUNK_ROWS", 400)  # four chunks, blocks cut across them
    src, out = private_home / "in.csv", private_home / "out.csv"
    records.to_csv(src, index=False)
    code, stdout, stderr = resolve(src, out, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    old = IdentityGraph(create_engine("sqlite://"), SALT, "DE", max_cluster=60, max_names=2)
    expected = old.resolve(pd.read_csv(src, dtype=str, keep_default_na=False), lenient=True)
    got = pd.read_csv(out, dtype=str)
    pd.testing.assert_frame_equal(got, expected)  # same ids, same order
    assert summary["customers"] == old.last_stats["customers"] == got["customer_id"].nunique()
    assert summary["links"] > 500 and summary["warnings"] > 0
    for key in ("records", "warnings", "unusable_values", "links"):
        assert summary[key] == old.last_stats[key], key
    fresh = create_engine(f"sqlite:///{private_home / 'out.graph.db'}")
    assert table(fresh, gs.records) == table(old.engine, gs.records)
    assert table(fresh, gs.keys) == table(old.engine, gs.keys)
    assert table(fresh, gs.customers, "created_at") == table(old.engine, gs.customers, "created_at")
    assert table(fresh, gs.links, "id", "made_at") == table(old.engine, gs.links, "id", "made_at")


def test_explain_and_split_on_an_engine_built_graph(
    private_home: Path, records: pd.DataFrame
) -> None:
    src, out = private_home / "in.csv", private_home / "out.csv"
    records.to_csv(src, index=False)
    assert resolve(src, out)[0] == 0
    ids = pd.read_csv(out, dtype=str)
    sizes = ids["customer_id"].value_counts()
    big = sizes.index[0]
    assert sizes.iloc[0] >= 3
    members = sorted(ids.loc[ids["customer_id"] == big, "record_id"])
    graph = ["--graph", str(private_home / "out.graph.db")]
    result = runner.invoke(app, ["identity", "explain", big, *graph, "--json"])
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(r["record_id"] for r in got["records"]) == members
    joined = {members[0]}  # the links join every record of the customer, each with a rule
    for _ in members:
        joined |= {x[k] for x in got["links"] for k in "ab" if joined & {x["a"], x["b"]}}
    assert joined == set(members) and all(x["rule"] for x in got["links"])
    result = runner.invoke(app, ["identity", "split", big, "--records", members[-1], *graph])
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["identity", "explain", big, *graph, "--json"])
    after = json.loads(result.stdout.strip().splitlines()[-1])
    assert members[-1] not in {r["record_id"] for r in after["records"]}


BAD_ROWS = [
    ("email", "hans(at)web.de", "'hans(at)web.de' is not an e-mail address (An email address "
     "must have an @-sign.)"),
    ("phone", "keine", "'keine' is not a phone number for region DE"),
    ("email", "grete@", "'grete@' is not an e-mail address (There must be something after the "
     "@-sign.)"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value", "reason"), BAD_ROWS)
def test_problems_name_their_row_in_the_whole_file(
    private_home: Path, monkeypatch: pytest.MonkeyPatch, column: str, value: str, reason: str
) -> None:
    """Row numbers count across chunks: --strict stops at row 950, lenient shows it."""
    monkeypatch.setattr(cli_features, "CHUNK_ROWS", 400)
    rows = [{c: "" for c in IDENTITY_INPUT_COLUMNS} for _ in range(1000)]
    for i, row in enumerate(rows):
        row |= {"record_id": f"p{i}", "email": f"p{i}@example.de", "phone": f"0151 2{i:07d}"}
    rows[949][column] = value
    src, out = private_home / "in.csv", private_home / "out.csv"
    pd.DataFrame(rows).to_csv(src, index=False)
    code, _, stderr = resolve(src, out, "--strict")
    assert code == 2
    assert stderr.strip() == f"error: row 950 (record_id p949), column {column}: {reason}"
    code, stdout, stderr = resolve(src, out, "--json")
    assert code == 0, stderr
    assert f"warning: row 950 (record_id p949), column {column}: {reason} (ignored)" in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["warnings"], summary["unusable_values"]) == (1, {column: 1})
    assert summary["customers"] == 1000


def test_a_header_alone_is_one_line(private_home: Path) -> None:
    src = private_home / "in.csv"
    src.write_text(",".join(IDENTITY_INPUT_COLUMNS) + "\n")
    code, _, stderr = resolve(src, private_home / "out.csv")
    assert code == 2 and stderr.strip() == f"error: --csv {src}: no records below the header"

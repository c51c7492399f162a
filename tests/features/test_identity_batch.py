"""The bounded-memory batch engine: same clusters as the in-memory resolver, block by block."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
from sqlalchemy import create_engine

from features import identity_batch, identity_blocks
from features.identity import IdentityGraph
from features.identity_batch import DuckRunner, resolve_csv
from features.identity_blocks import compute_blocks
from features.identity_chunks import normalise_chunk
from features.identity_messy import messy_records
from features.identity_records import IdentityInputError, prepare
from features.schema import IDENTITY_INPUT_COLUMNS

OPTIONS = dict(region="DE", max_size=60, max_names=2)


def groups(frame: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(g) for _, g in frame.groupby("customer_id")["record_id"]}


@pytest.fixture(scope="module")
def records_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "records.csv"
    messy_records(1500, seed=3).to_csv(path, index=False)
    return path


def test_engine_gives_the_in_memory_resolvers_clusters(records_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(records_csv, dtype=str, keep_default_na=False)
    graph = IdentityGraph(create_engine("sqlite://"), "salt", "DE", max_cluster=60, max_names=2)
    expected = graph.resolve(frame, lenient=True)
    summary = resolve_csv(records_csv, tmp_path / "out.csv", chunk_rows=400, **OPTIONS)
    got = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert summary.records == len(frame) == len(got)
    assert groups(got) == groups(expected)
    assert summary.clusters == expected["customer_id"].nunique()


def test_engine_links_block_by_block_and_reads_in_chunks(
    records_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input is read chunk_rows at a time and link_block only ever sees one block."""
    chunks, calls = [], []
    real_normalise, real_link = identity_batch.normalise_chunk, identity_blocks.link_block

    def normalise(chunk: pd.DataFrame, region: str):  # the real function, observed
        chunks.append(len(chunk))
        return real_normalise(chunk, region)

    def link(records, **kw):
        calls.append(len(records))
        return real_link(records, **kw)

    monkeypatch.setattr(identity_batch, "normalise_chunk", normalise)
    monkeypatch.setattr(identity_blocks, "link_block", link)
    small = resolve_csv(records_csv, tmp_path / "small.parquet", chunk_rows=100, **OPTIONS)
    assert max(chunks) == 100 and sum(chunks) == 1500
    assert max(calls) == small.largest_block < 60
    assert len(calls) < small.blocks  # singletons never reach Python
    monkeypatch.undo()
    whole = resolve_csv(records_csv, tmp_path / "whole.parquet", chunk_rows=10_000, **OPTIONS)
    assert groups(pd.read_parquet(tmp_path / "small.parquet")) == groups(
        pd.read_parquet(tmp_path / "whole.parquet")
    )
    assert whole.blocks == small.blocks


def test_chunk_normalisation_equals_the_record_contract(records_csv: Path) -> None:
    frame = pd.read_csv(records_csv, dtype=str, keep_default_na=False)
    canonical, unusable = normalise_chunk(frame, "DE")
    warnings: list[str] = []
    for record, row in zip(prepare(frame, "DE", warnings), canonical.itertuples(), strict=True):
        keys = {f: getattr(row, f) for f in record.keys} | {
            f: v for f in ("email", "phone") if (v := getattr(row, f))
        }
        assert keys == record.keys
        assert (row.first_name, row.last_name) == (record.first, record.last)
    assert sum(unusable.values()) == len([w for w in warnings if "(ignored)" in w]) > 0


def test_blocks_are_components_of_shared_keys() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE r AS SELECT * FROM (VALUES "
        "(0, 'a@x.de', NULL, NULL, NULL, NULL), (1, 'a@x.de', '+4930', NULL, NULL, NULL), "
        "(2, NULL, '+4930', 'L1', NULL, NULL), (3, NULL, NULL, 'L1', NULL, NULL), "
        "(4, 'b@x.de', NULL, NULL, NULL, NULL), (5, NULL, NULL, NULL, NULL, NULL)"
        ") t(rid, email, phone, loyalty_id, login_id, cookie_id)"
    )
    rounds = compute_blocks(DuckRunner(con), "r")
    got = dict(con.execute("SELECT rid, block FROM blocks").fetchall())
    assert got == {0: 0, 1: 0, 2: 0, 3: 0, 4: 4, 5: 5}
    assert 2 <= rounds <= 4


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HEADER = ",".join(IDENTITY_INPUT_COLUMNS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("record_id,email\nR1,a@b.de\n", r"column phone, first_name, .*: missing from the input"),
        (
            f"{HEADER}\nR1,a@b.de,,,,,,\nR1,c@d.de,,,,,,\n",
            r"column record_id: 'R1' appears 2 times",
        ),
        (f"{HEADER}\n", r"--csv: .* has no records"),
        ("", r"--csv: cannot read"),
        (
            HEADER.replace(",", ";") + "\nR1;a@b.de;;;;;;\n",
            r"column header: one column only; the delimiter must be ',' \(found ';'\)",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "in.csv", content)
    with pytest.raises(IdentityInputError, match=message):
        resolve_csv(path, tmp_path / "out.csv", **OPTIONS)


def test_unusable_values_are_counted_not_fatal(tmp_path: Path) -> None:
    rows = (
        f"{HEADER}\nR1,not-an-email,call me,Anna,Berg,,,\n"
        "R2,anna@berg.de,030 1234567,Anna,Berg,,,\n"
    )
    summary = resolve_csv(_write(tmp_path / "in.csv", rows), tmp_path / "out.csv", **OPTIONS)
    assert summary.unusable_values["email"] == 1 and summary.unusable_values["phone"] == 1
    assert summary.records_without_identifiers == 1 and summary.clusters == 2

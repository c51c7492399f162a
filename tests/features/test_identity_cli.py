"""The batch CLI as a steward uses it: fresh graph by default, explain, split, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from features.identity import Identifiers, IdentityGraph, graph_for
from features.identity_admin import StewardError, explain, split
from features.schema import IDENTITY_INPUT_COLUMNS
from nextbest.cli import app
from nextbest.settings import get_settings

runner = CliRunner()

HOUSEHOLD = [  # the Müllers: father and daughter share the family e-mail and the landline
    {"id": "r1", "email": "familie.mueller@web.de", "phone": "0151 11111111",
     "first_name": "Johannes", "last_name": "Müller", "login_id": "jm1"},
    {"id": "r2", "email": "familie.mueller@web.de", "phone": "030 1234567",
     "first_name": "Hans", "last_name": "Mueller"},
    {"id": "r3", "phone": "+49 30 1234567", "first_name": "Katharina", "last_name": "Müller"},
    {"id": "r4", "email": "kathi.m@gmx.de", "phone": "0049 30 1234567", "first_name": "Kathi",
     "last_name": "Müller"},
    {"id": "r5", "email": "kathi.m@gmx.de", "first_name": "Katharina", "last_name": "Mülller",
     "loyalty_id": "KD-1"},
]  # fmt: skip


def frame(rows: list[dict]) -> pd.DataFrame:
    full = [{c: None for c in IDENTITY_INPUT_COLUMNS} | {"record_id": r["id"]} | r for r in rows]
    return pd.DataFrame(full)[list(IDENTITY_INPUT_COLUMNS)]


def resolve(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["identity", "resolve", "--region", "DE", *args])
    return result.exit_code, result.stdout, result.stderr


def test_resolve_writes_a_fresh_graph_and_leaves_the_home_alone(private_home: Path) -> None:
    src, out = private_home / "in.csv", private_home / "out.csv"
    frame(HOUSEHOLD).to_csv(src, index=False)
    code, stdout, stderr = resolve("--csv", str(src), "--out", str(out), "--json")
    assert code == 0, stderr
    graph_file = private_home / "out.graph.db"
    assert stderr.strip().splitlines()[-1] == (
        f"wrote 2 customers for 5 records to {out}, in a fresh graph {graph_file}; "
        "the home graph was not touched"
    )
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["graph"] == str(graph_file) and summary["customers"] == 2
    ids = pd.read_csv(out).set_index("record_id")["customer_id"]
    assert ids["r1"] == ids["r2"] != ids["r3"] == ids["r4"] == ids["r5"]
    home = graph_for(get_settings())
    assert home.lookup(Identifiers(login_id="jm1")) is None  # nothing reached the home graph
    fresh = IdentityGraph(create_engine(f"sqlite:///{graph_file}"), "nextbest-dev-salt", "DE")
    assert fresh.lookup(Identifiers(login_id="jm1")) == ids["r1"]

    code, _, stderr = resolve("--csv", str(src), "--out", str(out), "--merge-into-home")
    assert code == 0, stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .endswith(f"merged into the home graph ({get_settings().ledger_db_url})")
    )
    assert home.lookup(Identifiers(login_id="jm1")) == pd.read_csv(out)["customer_id"][0]


def test_explain_names_each_link_and_its_rule(private_home: Path) -> None:
    src, out = private_home / "in.csv", private_home / "out.csv"
    frame(HOUSEHOLD).to_csv(src, index=False)
    assert resolve("--csv", str(src), "--out", str(out))[0] == 0
    kathi = pd.read_csv(out).set_index("record_id")["customer_id"]["r3"]
    graph = ["--graph", str(private_home / "out.graph.db")]
    result = runner.invoke(app, ["identity", "explain", kathi, *graph, "--json"])
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["record_id"] for r in got["records"]] == ["r3", "r4", "r5"]
    assert got["records"][2]["identifiers"] == ["email", "loyalty"]
    assert {(x["a"], x["b"], x["rule"]) for x in got["links"]} == {
        ("r4", "r5", "same_email"),
        ("r3", "r4", "name_in_shared_landline"),
    }
    result = runner.invoke(app, ["identity", "explain", "Cnobody", *graph])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: customer_id 'Cnobody': not in the identity graph"


def test_split_is_remembered_by_the_next_run() -> None:
    graph = IdentityGraph(create_engine("sqlite://"), "test-salt", "DE")
    first = graph.resolve(frame(HOUSEHOLD)).set_index("record_id")["customer_id"]
    kathi = first["r3"]
    done = split(graph, kathi, ["r5"])
    assert (done["moved_records"], done["kept_records"]) == (1, 2)
    after = explain(graph, kathi)
    assert [r["record_id"] for r in after.records] == ["r3", "r4"]
    assert all("r5" not in (x.a, x.b) for x in after.links)
    assert graph.lookup(Identifiers(loyalty_id="KD-1")) == done["new_customer_id"]
    # the e-mail r4 and r5 share is now held by both customers: no longer a unique key
    assert graph.lookup(Identifiers(email="kathi.m@gmx.de")) is None

    again = graph.resolve(frame(HOUSEHOLD)).set_index("record_id")["customer_id"]
    assert again["r5"] == done["new_customer_id"] != again["r4"] == kathi
    assert graph.last_stats["refused_split"] >= 1
    fresh_batch = frame([{**HOUSEHOLD[4], "id": "r6"}])  # a new record like r5 and r4
    assert graph.resolve(fresh_batch)["customer_id"][0] in {kathi, done["new_customer_id"]}


@pytest.mark.parametrize(
    ("customer", "records", "message"),
    [
        ("Cnobody", ["r1"], "customer_id 'Cnobody': not in the identity graph"),
        (None, ["r9"], "--records: 'r9' is not a record of customer {c}"),
        (None, ["r1", "r2"], "--records: that is every record of customer {c}; keep one"),
        (None, [" ", ""], "--records: give at least one record_id to split off"),
    ],
)
def test_split_refuses_with_the_reason(customer: str | None, records: list, message: str) -> None:
    graph = IdentityGraph(create_engine("sqlite://"), "test-salt", "DE")
    c = graph.resolve(frame(HOUSEHOLD)).set_index("record_id")["customer_id"]["r1"]
    with pytest.raises(StewardError) as err:
        split(graph, customer or c, records)
    assert str(err.value) == message.format(c=c)


def test_cli_split_then_explain(private_home: Path) -> None:
    src, out = private_home / "in.csv", private_home / "out.csv"
    frame(HOUSEHOLD).to_csv(src, index=False)
    assert resolve("--csv", str(src), "--out", str(out), "--merge-into-home")[0] == 0
    kathi = pd.read_csv(out).set_index("record_id")["customer_id"]["r3"]
    result = runner.invoke(app, ["identity", "split", kathi, "--records", "r5", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["moved_records"] == 1
    result = runner.invoke(app, ["identity", "explain", kathi])
    assert result.exit_code == 0 and "name_in_shared_landline" in result.stdout


BAD_FILES = [
    ("missing.csv", None, "--csv {p}: cannot read (No such file or directory)"),
    ("empty.csv", b"", "--csv {p}: the file is empty (expected a header row)"),
    ("binary.csv", b"\xff\xfe\x00\x01record_id", "--csv {p}: cannot read (not UTF-8 text: "
     "invalid start byte)"),
    ("semicolons.csv", "record_id;email;phone;first_name;last_name;loyalty_id;login_id;"
     "cookie_id\nr1;a@b.de;;;;;;\n", "--csv {p}: the header is one column split by ';', not "
     "by ',' (pass --delimiter ';')"),
    ("tabs.csv", "record_id\temail\nr1\ta@b.de\n", "--csv {p}: the header is one column split "
     "by '\\t', not by ',' (pass --delimiter '\\t')"),
    ("columns.csv", "record_id,email,phone\nr1,a@b.de,\n", "--csv {p}: missing column(s) "
     "first_name, last_name, loyalty_id, login_id, cookie_id"),
    ("ragged.csv", "record_id,email,phone,first_name,last_name,loyalty_id,login_id,cookie_id\n"
     "r1,a@b.de,,,,,,,,,extra\n", "--csv {p}: cannot parse (a row has more fields than the "
     "header)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_bad_files_fail_with_one_line(
    private_home: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = private_home / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, _, stderr = resolve("--csv", str(path), "--out", str(private_home / "o.csv"))
    assert code == 2
    assert stderr.strip() == "error: " + message.format(p=path)


def test_malformed_values_are_counted_not_fatal(private_home: Path) -> None:
    rows = [
        {"id": "r1", "email": "hans(at)web.de", "phone": "0151 11111111", "first_name": "Hans"},
        {"id": "r2", "email": "hans@web.de", "phone": "n/a", "first_name": "Hans"},
        {"id": "r3", "email": "grete@", "phone": "keine", "first_name": "Grete"},
    ]
    src, out = private_home / "in.csv", private_home / "out.csv"
    frame(rows).to_csv(src, index=False)
    code, stdout, stderr = resolve("--csv", str(src), "--out", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["unusable_values"] == {"email": 2, "phone": 2}
    assert summary["records"] == 3 and len(pd.read_csv(out)) == 3
    assert "warning: row 1 (record_id r1), column email: 'hans(at)web.de'" in stderr
    code, _, stderr = resolve("--csv", str(src), "--out", str(out), "--strict")
    assert code == 2 and stderr.strip().startswith(
        "error: row 1 (record_id r1), column email: 'hans(at)web.de' is not an e-mail address"
    )


def test_erasure_removes_the_links_and_splits_of_the_person() -> None:
    from sqlalchemy import func, select

    from features import graph_store as gs

    graph = IdentityGraph(create_engine("sqlite://"), "test-salt", "DE")
    ids = graph.resolve(frame(HOUSEHOLD)).set_index("record_id")["customer_id"]
    split(graph, ids["r3"], ["r5"])
    with graph.engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(gs.links)).scalar()
    assert graph.erase(ids["r3"]) > 0
    with graph.engine.connect() as conn:
        after = conn.execute(select(func.count()).select_from(gs.links)).scalar()
        sides = conn.execute(select(gs.splits.c.side)).scalars().all()
    assert before > after  # the r3-r4 link went with the person
    assert sides == [1]  # only the split-off record (now another customer) is remembered

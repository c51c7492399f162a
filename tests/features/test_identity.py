"""Identity resolution: normalisers, tricky linkage cases, persistence, real-time path, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from features import normalize as nz
from features.identity import Identifiers, IdentityGraph, graph_for, identifier_hashes
from features.identity_eval import evaluate_world, pair_counts
from features.identity_records import IdentityInputError
from features.schema import IDENTITY_INPUT_COLUMNS
from nextbest.cli import app
from nextbest.settings import get_settings


def frame(*rows: dict) -> pd.DataFrame:
    """Records with every input column; ``id`` is the record_id."""
    out = [{c: None for c in IDENTITY_INPUT_COLUMNS} | {"record_id": r["id"]} | r for r in rows]
    return pd.DataFrame(out)[list(IDENTITY_INPUT_COLUMNS)]


def new_graph(**kw) -> IdentityGraph:
    return IdentityGraph(create_engine("sqlite://"), "test-salt", "GB", **kw)


def groups(resolved: pd.DataFrame) -> set[frozenset[str]]:
    """The partition of record ids that a resolution produced."""
    return {frozenset(g) for _, g in resolved.groupby("customer_id")["record_id"]}


def partition(*parts: str) -> set[frozenset[str]]:
    return {frozenset(p.split()) for p in parts}


# --- normalisers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("07700 900123", "+447700900123"),
        ("+44 7700 900123", "+447700900123"),
        ("+44 (0)7700 900123", "+447700900123"),
        ("0044 7700 900123", "+447700900123"),
        ("(07700) 900-123", "+447700900123"),
        ("0113 496 0000", "+441134960000"),
    ],
)
def test_phone_formats_reach_one_e164(raw: str, e164: str) -> None:
    assert nz.normalize_phone(raw, "GB") == e164


def test_phone_region_decides_national_numbers() -> None:
    assert nz.normalize_phone("(415) 555-2671", "US") == "+14155552671"
    with pytest.raises(nz.NormalizeError, match=r"'12ab' is not a phone number for region GB"):
        nz.normalize_phone("12ab", "GB")


def test_email_and_names() -> None:
    assert nz.normalize_email("  John.Smith@Example.COM ") == "john.smith@example.com"
    with pytest.raises(nz.NormalizeError, match="is not an e-mail address"):
        nz.normalize_email("john@@example.com")
    assert nz.normalize_name(" Zoë ") == "zoe"
    assert nz.canonical_first("bob") == nz.canonical_first("robert") == "robert"
    assert nz.names_match("alex", "alexandra") and nz.names_match("mragaret", "margaret")
    assert not nz.names_match("john", "jane") and not nz.names_match("nick", "rick")


# --- linkage: a table of tricky cases -----------------------------------------------------

HOME = "thesmiths@example.com"
CASES = {
    "email case and spaces": (
        [
            {"id": "a", "email": " John.Smith@Example.COM ", "first_name": "John"},
            {
                "id": "b",
                "email": "john.smith@example.com",
                "first_name": "JOHN",
                "last_name": "Smith",
            },
        ],
        ["a b"],
    ),
    "phone formats + nickname": (
        [
            {"id": "a", "phone": "07700 900123", "first_name": "Robert", "last_name": "Brown"},
            {"id": "b", "phone": "+44 7700 900123", "first_name": "Bob", "last_name": "Brown"},
            {"id": "c", "phone": "(07700) 900-123", "first_name": "Rbert", "last_name": "brown"},
        ],
        ["a b c"],
    ),
    "household e-mail, different first names": (
        [
            {"id": "a", "email": HOME, "first_name": "John", "last_name": "Smith"},
            {"id": "b", "email": HOME.upper(), "first_name": "Jane", "last_name": "Smith"},
        ],
        ["a", "b"],
    ),
    "nameless record on a household e-mail is ambiguous": (
        [
            {"id": "a", "email": HOME, "first_name": "John", "last_name": "Smith"},
            {"id": "b", "email": HOME, "first_name": "Jane", "last_name": "Smith"},
            {"id": "c", "email": HOME},
        ],
        ["a", "b", "c"],
    ),
    "nameless record joins the one person on a personal e-mail": (
        [
            {"id": "a", "email": "js@example.com", "first_name": "John", "last_name": "Smith"},
            {"id": "b", "email": "JS@example.com "},
        ],
        ["a b"],
    ),
    "shared landline, different first names": (
        [
            {"id": "a", "phone": "0113 496 0000", "first_name": "John", "last_name": "Smith"},
            {"id": "b", "phone": "01134960000", "first_name": "Jane", "last_name": "Smith"},
        ],
        ["a", "b"],
    ),
    "same name and phone": (
        [
            {"id": "a", "phone": "0113 496 0000", "first_name": "Elizabeth", "last_name": "Hall"},
            {"id": "b", "phone": "+44 113 496 0000", "first_name": "Liz", "last_name": "Hall"},
        ],
        ["a b"],
    ),
    "same name and e-mail but different logins (father and son)": (
        [
            {
                "id": "a",
                "email": HOME,
                "first_name": "John",
                "last_name": "Smith",
                "login_id": "u1",
            },
            {
                "id": "b",
                "email": HOME,
                "first_name": "John",
                "last_name": "Smith",
                "login_id": "u2",
            },
        ],
        ["a", "b"],
    ),
    "cookie linked only by a login": (
        [
            {"id": "a", "login_id": "acc-1", "email": "x@example.com", "first_name": "Ann"},
            {"id": "b", "login_id": "ACC-1 ", "cookie_id": "ck1"},
            {"id": "c", "cookie_id": "ck1"},
            {"id": "d", "cookie_id": "ck2"},
            {"id": "e", "cookie_id": "ck2"},
        ],
        ["a b c", "d e"],
    ),
    "shared device: a cookie seen with two logins links nobody": (
        [
            {"id": "a", "login_id": "acc-1", "cookie_id": "ck1"},
            {"id": "b", "login_id": "acc-2", "cookie_id": "ck1"},
            {"id": "c", "cookie_id": "ck1"},
        ],
        ["a", "b", "c"],
    ),
    "bridge record joins two pieces": (
        [
            {"id": "a", "email": "pat@example.com"},
            {"id": "b", "loyalty_id": "LC 0001"},
            {"id": "c", "email": "pat@example.com", "loyalty_id": "lc-0001", "first_name": "Pat"},
        ],
        ["a b c"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tricky_cases(case: str) -> None:
    rows, expected = CASES[case]
    assert groups(new_graph().resolve(frame(*rows))) == partition(*expected)


def test_link_by_name_is_an_opt_in_last_resort() -> None:
    mia = {"first_name": "Mia", "last_name": "Jackson"}
    two = frame({"id": "a", "login_id": "acc-7"} | mia, {"id": "b", "phone": "07700 900555"} | mia)
    assert groups(new_graph().resolve(two)) == partition("a", "b")
    assert groups(new_graph(name_only=True).resolve(two)) == partition("a b")
    three = pd.concat([two, frame({"id": "c", "email": "mj@example.com"} | mia)])
    assert groups(new_graph(name_only=True).resolve(three)) == partition("a", "b", "c")
    other_login = pd.concat([two, frame({"id": "c", "login_id": "acc-8"} | mia)]).iloc[[0, 2]]
    assert groups(new_graph(name_only=True).resolve(other_login)) == partition("a", "c")


def test_oversized_clusters_are_refused() -> None:
    shared = frame(*({"id": f"r{i}", "loyalty_id": "LC-SHARED"} for i in range(12)))
    sizes = new_graph(max_cluster=5).resolve(shared)["customer_id"].value_counts()
    assert sizes.max() <= 5 and sizes.sum() == 12
    names = ["John", "Jane", "Mary", "Peter"]
    login = frame(*({"id": n, "login_id": "family", "first_name": n} for n in names))
    assert groups(new_graph(max_names=2).resolve(login)) == partition("John Jane", "Mary", "Peter")


# --- persistence, incrementality, stability -----------------------------------------------

BATCH = frame(
    {"id": "a", "email": "amy@example.com", "first_name": "Amy", "last_name": "Lee"},
    {"id": "b", "phone": "07700 900777", "first_name": "Ann", "last_name": "Lee", "login_id": "u9"},
    {"id": "c", "email": HOME, "first_name": "Tom", "last_name": "Lee"},
    {"id": "d", "email": HOME, "first_name": "Tim", "last_name": "Lee"},
    {"id": "e", "cookie_id": "ck9"},
)


def test_ids_stable_across_reruns_and_fresh_databases() -> None:
    graph = new_graph()
    first = graph.resolve(BATCH)
    assert first["customer_id"].str.fullmatch(r"C[0-9a-f]{12}").all()
    assert graph.resolve(BATCH).equals(first)
    assert graph.last_stats["new_customers"] == 0
    assert new_graph().resolve(BATCH).equals(first)  # derived ids: same on a fresh database
    shuffled = new_graph().resolve(BATCH.iloc[::-1])
    assert dict(zip(shuffled.record_id, shuffled.customer_id, strict=True)) == dict(
        zip(first.record_id, first.customer_id, strict=True)
    )


def test_incremental_join_and_bridge_keep_the_oldest_id() -> None:
    graph = new_graph()
    one = graph.resolve(frame({"id": "a", "email": "pat@example.com"}))
    two = graph.resolve(frame({"id": "b", "loyalty_id": "LC-1"}))
    old, young = one["customer_id"][0], two["customer_id"][0]
    joined = graph.resolve(frame({"id": "c", "login_id": "pat", "email": "PAT@example.com"}))
    assert joined["customer_id"][0] == old  # a new record joins an existing customer
    bridge = graph.resolve(frame({"id": "d", "email": "pat@example.com", "loyalty_id": "lc-1"}))
    assert bridge["customer_id"][0] == old and graph.last_stats["merged_customers"] == 1
    assert graph.lookup(Identifiers(loyalty_id="LC-1")) == old
    assert graph.lookup(Identifiers(customer_id=young)) == old  # the merge is recorded
    with graph.engine.connect() as conn:
        rows = conn.execute(text("select from_id, into_id from identity_merges")).all()
    assert [tuple(r) for r in rows] == [(young, old)]
    again = graph.resolve(BATCH)
    assert graph.resolve(BATCH).equals(again) and graph.last_stats["merged_customers"] == 0


def test_only_salted_hashes_are_stored(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/g.db")
    IdentityGraph(engine, "test-salt", "GB").resolve(BATCH)
    dump = "\n".join(
        str(row)
        for table in ("identity_keys", "identity_records", "identity_customers")
        for row in engine.connect().execute(text(f"select * from {table}"))
    ).lower()
    for plain in ("amy@example.com", "example", "7700900777", "amy", "lee", "u9", "ck9"):
        assert plain not in dump
    other = IdentityGraph(create_engine("sqlite://"), "another-salt", "GB").resolve(BATCH)
    assert set(other["customer_id"]).isdisjoint(set(new_graph().resolve(BATCH)["customer_id"]))


def test_an_older_graph_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE identity_records (record_hash VARCHAR(32) PRIMARY KEY, "
                "customer_id VARCHAR(16) NOT NULL, first_hash VARCHAR(32), last_hash VARCHAR(32))"
            )
        )
    graph = IdentityGraph(engine, "test-salt", "GB")
    assert graph.resolve(BATCH).equals(new_graph().resolve(BATCH))
    with engine.connect() as conn:
        names = conn.execute(text("select first_variants from identity_records")).scalars()
        assert sum(v is not None for v in names) == 4


# --- real-time path -------------------------------------------------------------------------


def test_lookup_after_resolve() -> None:
    graph = new_graph()
    ids = dict(zip(*graph.resolve(BATCH).T.values, strict=True))
    assert len(set(ids.values())) == 5
    assert graph.lookup(Identifiers(email=" AMY@example.com")) == ids["a"]
    assert graph.lookup(Identifiers(phone="+44 7700 900777")) == ids["b"]
    assert graph.lookup(Identifiers(login_id="U9")) == ids["b"]
    assert graph.lookup(Identifiers(cookie_id="ck9")) == ids["e"]
    assert graph.lookup(Identifiers(email=HOME)) is None  # a household address names two
    assert graph.lookup(Identifiers(email=HOME, login_id="u9")) == ids["b"]
    assert graph.lookup(Identifiers(email="nobody@example.com")) is None
    assert graph.lookup(Identifiers(phone="not a phone")) is None
    assert graph.lookup(Identifiers(customer_id=ids["c"])) == ids["c"]


def test_link_creates_then_bridges_a_cookie_into_its_login() -> None:
    graph = new_graph()
    member = graph.resolve(frame({"id": "a", "login_id": "u1", "first_name": "Ann"}))
    anon = graph.link(Identifiers(cookie_id="ck-new"))
    assert anon != member["customer_id"][0] and graph.link(Identifiers(cookie_id="ck-new")) == anon
    assert graph.link(Identifiers(cookie_id="ck-new", login_id="u1")) == member["customer_id"][0]
    assert graph.lookup(Identifiers(cookie_id="ck-new")) == member["customer_id"][0]
    assert graph.lookup(Identifiers(customer_id=anon)) == member["customer_id"][0]
    with pytest.raises(ValueError, match="at least one usable identifier"):
        graph.link(Identifiers(phone="12ab"))


def test_link_never_bridges_two_members_through_a_shared_device() -> None:
    graph = new_graph()
    two = graph.resolve(
        frame(
            {"id": "a", "login_id": "u1", "cookie_id": "family-pc", "first_name": "Ann"},
            {"id": "b", "login_id": "u2", "cookie_id": "family-pc", "first_name": "Bob"},
        )
    )
    ann, bob = two["customer_id"]
    assert ann != bob and graph.lookup(Identifiers(cookie_id="family-pc")) is None
    assert graph.link(Identifiers(cookie_id="family-pc", login_id="u1")) == ann
    assert graph.lookup(Identifiers(login_id="u2")) == bob
    assert graph.link(Identifiers(customer_id="C000000000000", email="new@example.com")) != ann
    assert graph.lookup(Identifiers(customer_id="C000000000000", login_id="u2")) == bob


def test_merged_ids_map_to_the_survivor_and_its_person_keys() -> None:
    """Two merges in a chain: both merged-away ids name the last survivor, in one step (what
    attribution remaps with), and the survivor's keys cover every id the person had."""
    graph = new_graph()
    oldest = graph.link(Identifiers(login_id="pat"))
    loyal = graph.link(Identifiers(loyalty_id="LC-5"))
    anon = graph.link(Identifiers(cookie_id="ck-pat"))
    assert graph.link(Identifiers(cookie_id="ck-pat", loyalty_id="lc5")) == loyal
    assert graph.link(Identifiers(login_id="PAT", loyalty_id="LC-5")) == oldest
    assert graph.canonical_ids() == {anon: oldest, loyal: oldest}
    canonical, others = graph.person_keys(anon)
    hashes = graph.key_hashes(Identifiers(login_id="pat", loyalty_id="LC 5", cookie_id="ck-pat"))
    assert canonical == oldest and set(others) == {anon, loyal, *hashes.values()}
    assert graph.person_keys("crm-42") == ("crm-42", [])  # unknown to the graph: as given


@pytest.mark.parametrize(
    ("field", "spellings"),
    [
        ("email", ["Ann@X.com", "ann@x.com", " ANN@X.COM "]),
        ("phone", ["07700 900123", "+44 7700 900123", "0044 (0)7700-900123"]),
        ("loyalty_id", ["LC-1234", "lc 1234", "LC 12-34"]),
        ("login_id", ["Ann.Smith", " ann.smith"]),
    ],
)
def test_identifier_hashes_are_one_per_identifier_however_spelled(
    field: str, spellings: list[str]
) -> None:
    """What an anonymous visitor's holdout is drawn on: the graph's own key, one per person."""
    hashes = {
        identifier_hashes(Identifiers(**{field: v}), "test-salt", "GB")[field] for v in spellings
    }
    assert hashes == {new_graph().key_hashes(Identifiers(**{field: spellings[0]}))[field]}


def test_map_identifiers_is_per_row_strongest_first() -> None:
    graph = new_graph()
    ids = dict(zip(*graph.resolve(BATCH).T.values, strict=True))
    events = pd.DataFrame(
        {
            "email": ["amy@example.com", HOME, HOME, None, "x@y.z"],
            "login_id": [None, None, "u9", None, None],
            "cookie_id": [None, None, None, "ck9", None],
        },
        index=[10, 11, 12, 13, 14],
    )
    got = graph.map_identifiers(events)
    assert list(got.index) == [10, 11, 12, 13, 14]
    assert got.tolist() == [ids["a"], None, ids["b"], ids["e"], None]


def test_erase_removes_every_row_of_the_customer() -> None:
    graph = new_graph()
    ids = dict(zip(*graph.resolve(BATCH).T.values, strict=True))
    assert graph.erase(ids["b"]) >= 4  # keys (phone, login), record, customer
    assert graph.lookup(Identifiers(login_id="u9")) is None
    assert graph.lookup(Identifiers(customer_id=ids["b"])) is None
    assert graph.lookup(Identifiers(email="amy@example.com")) == ids["a"]
    assert graph.erase(ids["b"]) == 0


# --- bad input ------------------------------------------------------------------------------

BAD = [
    (
        frame({"id": "r1", "email": "a@example.com"}).drop(columns=["phone", "cookie_id"]),
        r"column phone, cookie_id: missing from the input",
    ),
    (
        frame({"id": "r1", "email": "a@example.com"}, {"id": "r1", "email": "b@example.com"}),
        r"row 2 \(record_id r1\), column record_id: duplicate of row 1",
    ),
    (
        frame({"id": "r1", "email": "a@example.com"}, {"id": " ", "email": "b@example.com"}),
        r"row 2 \(record_id None\), column record_id: is empty",
    ),
    (
        frame({"id": "r1", "first_name": "Ann", "last_name": "Lee"}),
        r"row 1 \(record_id r1\), column login_id/loyalty_id/cookie_id/email/phone: "
        r"no usable identifier",
    ),
    (
        frame(
            {"id": "r1", "email": "a@example.com"},
            {"id": "r2", "email": "a@b@c"},
        ),
        r"row 2 \(record_id r2\), column email: 'a@b@c' is not an e-mail address",
    ),
    (
        frame(
            {"id": "r1", "email": "a@example.com"},
            {"id": "r2", "email": "b@example.com"},
            {"id": "r3", "email": "c@example.com", "phone": "12ab"},
        ),
        r"^row 3 \(record_id r3\), column phone: '12ab' is not a phone number for region GB$",
    ),
    (
        frame({"id": "r1", "email": "a@example.com", "first_name": "123"}),
        r"row 1 \(record_id r1\), column first_name: '123' has no letters",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD)
def test_bad_records_name_row_and_column(bad: pd.DataFrame, message: str) -> None:
    with pytest.raises(IdentityInputError, match=message):
        new_graph().resolve(bad)


def test_lenient_mode_warns_and_keeps_going() -> None:
    graph = new_graph()
    out = graph.resolve(
        frame(
            {"id": "r1", "email": "a@example.com", "phone": "12ab"},
            {"id": "r2", "first_name": "Ann"},
        ),
        lenient=True,
    )
    assert len(out) == 2 and out["customer_id"].nunique() == 2
    assert graph.last_warnings[0].startswith("row 1 (record_id r1), column phone: '12ab'")
    assert "kept as a customer of its own" in graph.last_warnings[1]


# --- CLI and evaluation ---------------------------------------------------------------------

runner = CliRunner()


def test_cli_resolve_writes_ids_and_rejects_bad_rows(private_home: Path) -> None:
    src, out = private_home / "in.csv", private_home / "out.csv"
    BATCH.to_csv(src, index=False)
    result = runner.invoke(
        app,
        [
            "identity",
            "resolve",
            "--csv",
            str(src),
            "--out",
            str(out),
            "--json",
            "--merge-into-home",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["records"] == len(BATCH)
    written = pd.read_csv(out)
    assert list(written.columns) == ["record_id", "customer_id"] and len(written) == len(BATCH)
    graph = graph_for(get_settings())
    assert (
        graph.lookup(Identifiers(login_id="u9"))
        == written.set_index("record_id")["customer_id"]["b"]
    )

    us = frame({"id": "r1", "phone": "(415) 555-2671"}, {"id": "r2", "phone": "+1 415 555 2671"})
    us.to_csv(src, index=False)
    result = runner.invoke(
        app, ["identity", "resolve", "--csv", str(src), "--out", str(out), "--region", "us"]
    )
    assert result.exit_code == 0 and pd.read_csv(out)["customer_id"].nunique() == 1

    frame({"id": "r1", "email": "a@example.com"}, {"id": "r2", "phone": "12ab"}).to_csv(
        src, index=False
    )
    result = runner.invoke(
        app, ["identity", "resolve", "--csv", str(src), "--out", str(out), "--strict"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: row 2 (record_id r2), column phone: '12ab' is not a phone number for region GB"
    )
    result = runner.invoke(
        app, ["identity", "resolve", "--csv", str(src), "--out", str(out), "--lenient"]
    )
    assert result.exit_code == 0 and len(pd.read_csv(out)) == 2
    assert "warning: row 2 (record_id r2), column phone: '12ab'" in result.stderr


def test_pair_counts_from_contingency() -> None:
    pred = pd.Series(["x", "x", "x", "y", "z"])
    truth = pd.Series([1, 1, 2, 2, 3])
    # predicted pairs: 3 (x) ; true pairs: 1 (1) + 1 (2) ; shared: 1
    m = pair_counts(pred, truth)
    assert (m["true_positive_pairs"], m["predicted_pairs"], m["true_pairs"]) == (1, 3, 2)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(0.5)


def test_evaluate_on_a_simulated_world(small_world: Path) -> None:
    """Against the simulator's truth: households must not merge, most of each person must."""
    scores = evaluate_world(small_world, "test-salt", "GB")
    assert scores["people"] == 200 and scores["records"] > 400
    assert scores["precision"] >= 0.99 and scores["f1"] >= 0.95
    # nearly everything that shares an identifier is linked (the rest shares nothing at all)
    assert scores["recall"] >= scores["recall_ceiling_keys"] - 0.02
    assert scores["recall_ceiling_keys"] <= scores["recall_ceiling_keys_and_names"] <= 1
    result = runner.invoke(app, ["identity", "evaluate", "--world", str(small_world), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["f1"] == pytest.approx(scores["f1"])


def test_postgresql_graph_matches_sqlite(pg_url: str) -> None:
    """Scale-out: the same graph code on PostgreSQL gives the same ids as on SQLite."""
    from nextbest.db import engine_for

    graph = IdentityGraph(engine_for(pg_url), "test-salt", "GB", name_only=True)
    expected = new_graph(name_only=True).resolve(BATCH)
    assert graph.resolve(BATCH).equals(expected) and graph.resolve(BATCH).equals(expected)
    ids = dict(zip(expected.record_id, expected.customer_id, strict=True))
    assert graph.lookup(Identifiers(login_id="U9")) == ids["b"]
    assert graph.map_identifiers(pd.DataFrame({"cookie_id": ["ck9"]})).tolist() == [ids["e"]]
    bridge = frame({"id": "f", "email": "amy@example.com", "cookie_id": "ck9", "first_name": "Amy"})
    assert graph.resolve(bridge)["customer_id"][0] in (ids["a"], ids["e"])
    assert graph.last_stats["merged_customers"] == 1
    assert graph.erase(ids["b"]) >= 4 and graph.lookup(Identifiers(login_id="u9")) is None

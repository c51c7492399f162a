"""The written world: deterministic bytes, the column contracts, sane contents, the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.schema import (
    CHANNELS,
    EVENT_COLUMNS,
    EVENT_TYPES,
    EXPOSURE_COLUMNS,
    IDENTITY_COLUMNS,
    IDENTITY_SOURCES,
    PEOPLE_COLUMNS,
)
from nextbest.cli import app
from simulator.world import TABLES, World, build_world, load_world, simulate_world, write_world

CONTRACTS = {
    "people": PEOPLE_COLUMNS,
    "identities": IDENTITY_COLUMNS,
    "events": EVENT_COLUMNS,
    "exposures": EXPOSURE_COLUMNS,
}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_gives_identical_parquet_and_another_seed_does_not(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate_world(150, 40, 3, a)
    simulate_world(150, 40, 3, b)
    simulate_world(150, 40, 4, c)
    assert _digests(a) == _digests(b)
    assert set(_digests(a)) == {f"{t}.parquet" for t in TABLES} | {"world.json"}
    differs = {k for k, v in _digests(c).items() if _digests(a)[k] != v}
    assert {"people.parquet", "events.parquet", "identities.parquet"} <= differs


def test_tables_follow_the_column_contracts(world: World, tmp_path: Path) -> None:
    write_world(world, tmp_path)
    for table, contract in CONTRACTS.items():
        schema = pq.read_schema(tmp_path / f"{table}.parquet")
        assert schema.names == list(contract), table
        for name, kind in contract.items():
            typ = str(schema.field(name).type)
            base = kind.split("|")[0]
            expected = {
                "string": "string",
                "int": "int64",
                "float": "double",
                "bool": "bool",
                "timestamp": "timestamp[us, tz=UTC]",
            }[base]
            assert typ == expected, (table, name, typ)
            if "null" not in kind and base != "string":
                col = pq.read_table(tmp_path / f"{table}.parquet", columns=[name]).column(0)
                assert col.null_count == 0, (table, name)
    back = load_world(tmp_path)
    assert back.meta["customers"] == 400 and len(back.people) == 400


def test_events_are_well_formed(world: World) -> None:
    ev = world.events
    assert set(ev.channel) <= set(CHANNELS)
    assert set(ev.event_type) <= set(EVENT_TYPES)
    assert set(EVENT_TYPES) - set(ev.event_type) == set(), "every event type occurs"
    assert ev.ts.is_monotonic_increasing
    assert ev.event_id.is_unique
    assert set(ev.true_person_id) <= set(world.people.person_id)
    ids = ev[["email", "phone", "loyalty_id", "login_id", "cookie_id"]]
    # nearly every event carries some identifier; web sessions always carry a cookie
    assert ids.notna().any(axis=1).mean() > 0.99
    assert ev.loc[ev.channel == "web", "cookie_id"].notna().all()
    # the app signs in (usage comes from the network feed, keyed by the line's phone number)
    assert ev.loc[(ev.channel == "app") & (ev.event_type != "usage"), "login_id"].notna().all()
    buys = ev[ev.event_type == "purchase"]
    assert buys.product_id.notna().all() and (buys.value > 0).all()
    consent = ev[ev.event_type == "consent_change"]
    assert (
        consent.consent_channel.isin(["email", "sms", "paid_media"]).all()
        and consent.consent_value.notna().all()
    )
    usage = ev[ev.event_type == "usage"]
    assert (usage.value > 0).all()
    # ad personalisation (issue 18): asked once of everyone with an e-mail, carried by it
    ads = consent[consent.consent_channel == "paid_media"]
    assert ads.email.notna().all() and 0.2 < ads.consent_value.astype(bool).mean() < 0.8


def test_nobody_acts_after_churning(world: World) -> None:
    churned = world.people.set_index("person_id")["churned_at"].dropna()
    ev = world.events[world.events.true_person_id.isin(churned.index)]
    after = ev.ts.to_numpy() > churned.reindex(ev.true_person_id).to_numpy()
    assert after.sum() == 0
    assert (world.events.event_type == "churn").sum() == len(churned)


def test_lifecycle_columns_are_consistent(world: World) -> None:
    p = world.people
    prepaid = p.plan == "prepaid"
    assert p.loc[prepaid, "contract_end"].isna().all()
    assert p.loc[~prepaid, "contract_end"].notna().all()
    renewed = p.renewed_at.notna()
    assert (p.loc[renewed, "prior_contract_end"].notna()).all()
    assert (p.loc[renewed, "contract_end"] > p.loc[renewed, "renewed_at"]).all()
    dis = p.disengaged_at.notna() & p.churned_at.notna()
    # usage drops before churn: people who disengaged churn at a far higher rate
    assert (
        p.loc[p.disengaged_at.notna(), "churned_at"].notna().mean()
        > 3 * p.churned_at.notna().mean() / 2
    )
    assert dis.sum() > 0


def test_identity_records_name_their_source_and_person(world: World) -> None:
    idn = world.identities
    assert set(idn.source) == set(IDENTITY_SOURCES)
    assert idn.record_id.is_unique
    assert set(idn.true_person_id) == set(world.people.person_id)
    assert (idn.groupby("true_person_id").size() >= 1).all()


def test_cli_writes_a_world_and_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "w"
    res = CliRunner().invoke(
        app,
        [
            "simulate",
            "--customers",
            "60",
            "--days",
            "20",
            "--seed",
            "1",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["rows"]["people"] == 60
    assert summary["rows"]["events"] == len(pd.read_parquet(out / "events.parquet"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "0"], "error: customers: must be at least 1, got 0"),
        (["--days", "-3"], "error: days: must be at least 1, got -3"),
        (["--seed", "-1"], "error: seed: must be >= 0, got -1"),
    ],
)
def test_cli_rejects_bad_sizes(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["simulate", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.strip() == message


def test_build_world_rejects_offers_without_a_response_model() -> None:
    from offers.catalog import load_catalog

    cat = load_catalog()
    extra = cat.get("data_addon").model_copy(update={"id": "mystery_box", "product_id": "box"})
    bad = cat.model_copy(update={"offers": [*cat.offers, extra]})
    with pytest.raises(ValueError, match=r"offers without a response model .*\['mystery_box'\]"):
        build_world(10, 5, 0, catalog=bad)

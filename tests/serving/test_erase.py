"""Issue 12 item 15: erasure reaches every store and every byte, and a request cut short by a
failing store is finished by a retry, merged-from ids included.

Real parts throughout: the SQLite ledger and identity graph, the Feast store (SQLite online
store, Parquet offline files), the event log, MLflow (SQLite tracking, local artifacts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from features import normalize
from nextbest.settings import Settings
from record.tables import OutcomeRow, now
from serving import actions, erasure
from serving.decide import DecideRequest, decide
from serving.deps import Deps
from tests.serving.conftest import ADMIN, CHANNEL

# One person, four identities as the channels type them; the canonical forms are searched too.
EMAIL, EMAIL_KEY = " Ann.Erase@Example.COM ", "ann.erase@example.com"
PHONE, PHONE_E164, PHONE_DIGITS = "07700 900461", "+447700900461", "07700900461"
LOYALTY, LOYALTY_KEY = "LOY-5521-88", "loy552188"
COOKIE = "ck-7f3e9a2b41"
FIRST, LAST = "Annabel", "Erasmusson"  # only in the source extract's identity records


def _caches_holding() -> list[str]:
    """The normalisers' memos that still hold entries."""
    memos = [v for v in vars(normalize).values() if hasattr(v, "cache_info")]
    return [m.__name__ for m in memos if m.cache_info().currsize]


def _merged_person(deps: Deps) -> tuple[str, str]:
    """Cookie first (an anonymous customer), then e-mail + loyalty card (a second customer),
    then a visit naming the card, the cookie and a phone: the two are merged into one.
    Returns (the id the person has now, the id merged into it)."""
    from features.identity import Identifiers

    first = deps.graph.link(Identifiers(cookie_id=COOKIE))
    second = deps.graph.link(Identifiers(email=EMAIL, loyalty_id=LOYALTY))
    assert first != second
    current = deps.graph.link(Identifiers(loyalty_id=LOYALTY, cookie_id=COOKIE, phone=PHONE))
    merged_from = second if current == first else first
    assert deps.graph.lookup(Identifiers(email=EMAIL)) == current
    return current, merged_from


def _erasure_record(deps: Deps) -> dict[str, Any]:
    with deps.ledger.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM erasures")).mappings().one()
    ids = row["customer_ids"]
    return {**row, "customer_ids": json.loads(ids) if isinstance(ids, str) else ids}


@pytest.mark.parametrize("retry", ["same request", "resume"])
def test_erasure_cut_short_by_the_feature_store_is_finished_by_a_retry(
    deps: Deps, retry: str
) -> None:
    """The feature store refuses (Redis down) after the ledger and graph are erased: the
    request stays recorded with the merged-from id, and a retry (the same request again, or
    the service's resume round) erases that id's events too."""
    from features.events import parse_event
    from features.ingest import append_event, read_event_log

    current, merged_from = _merged_person(deps)
    for n, cid in enumerate((merged_from, current)):  # events logged before and after the merge
        event = {"event_id": f"ev-{n}", "ts": "2026-01-02T10:00:00Z", "channel": "app"}
        event |= {"event_type": "session_start", "customer_id": cid}
        append_event(deps.settings, parse_event(event), cid)
        decide(DecideRequest(customer_id=cid, channel="web"), deps)
    sqlite = deps.settings
    deps.settings = sqlite.model_copy(update={"online_store": "redis", "redis_url": "127.0.0.1:1"})

    first = actions.erase(actions.EraseRequest(customer_id=current), deps)
    assert first["features"].startswith("failed: ConnectionError"), first
    assert first["ledger"]["decisions"] == 2 and first["identities"] > 0, first
    record = _erasure_record(deps)
    assert record["status"] == "pending" and not record["features_done"], record
    assert record["ledger_done"] and record["identities_done"], record
    assert merged_from in record["customer_ids"]  # kept, though the graph forgot the merge
    assert actions._lookup({"email": EMAIL}, deps) is None
    assert merged_from in set(read_event_log(sqlite)["customer_id"])

    deps.settings = sqlite  # the store is back
    if retry == "same request":
        again = actions.erase(actions.EraseRequest(customer_id=current), deps)
    else:
        from serving.erasure import resume_pending

        (again,) = resume_pending(deps)
    assert again["status"] == "done" and again["features"]["event_log"] == 1, again
    assert again["ledger"] == "done earlier" and again["identities"] == "done earlier", again
    assert not {current, merged_from} & set(read_event_log(sqlite)["customer_id"])
    record = _erasure_record(deps)
    assert (record["status"], record["customer_ids"], record["last_error"]) == ("done", [], "")
    assert current not in json.dumps(record, default=str)  # the proof keeps a hash only
    assert _found(sqlite.home, [current, merged_from]) == []  # nor any file, WALs included


def test_erased_outcome_keeps_a_hashed_key_and_a_retry_counts_once(deps: Deps) -> None:
    """Context, scores, reason and the outcome's idempotency key (here it spells an e-mail)
    leave the ledger; the same outcome sent again after the erasure is not counted again."""
    r = decide(
        DecideRequest(customer_id="c-post", channel="web", context={"page": f"/me?{EMAIL_KEY}"}),
        deps,
    )
    key = f"order-{EMAIL_KEY}-1"
    outcome = OutcomeRow(
        idempotency_key=key, decision_id=r.decision_id, customer_id="c-post", type="conversion",
        ts=now(),
    )  # fmt: skip
    assert deps.ledger.record_outcome(outcome)
    actions.erase(actions.EraseRequest(customer_id="c-post"), deps)
    row = deps.ledger.decision(r.decision_id)
    assert (row.customer_id, row.context, row.scores, row.reason) == (None, {}, {}, "")
    (stored,) = deps.ledger.outcomes_frame()["idempotency_key"]
    assert stored.startswith("erased:") and EMAIL_KEY not in stored
    assert deps.ledger.record_outcome(outcome) is False  # a retry still counts once
    assert len(deps.ledger.outcomes_frame()) == 1


def _needles(ids: list[str]) -> list[str]:
    return [EMAIL.strip(), EMAIL_KEY, PHONE, PHONE_E164, PHONE_DIGITS, LOYALTY, LOYALTY_KEY,
            COOKIE, FIRST, LAST, *ids]  # fmt: skip


def _source_extracts(settings: Settings) -> None:
    """What the source systems delivered under the home's world folder: identity records
    (the person's two, written as those systems write them, and someone else's) and events."""
    from features.schema import IDENTITY_INPUT_COLUMNS

    records = pd.DataFrame(
        [
            ["crm-1", EMAIL.upper(), None, FIRST, LAST, LOYALTY.lower(), None, None],
            ["web-7", None, "+44 7700 900461", None, None, None, None, COOKIE],
            ["crm-2", "bob@example.org", "07700 900999", "Bob", "Other", "LOY-1", None, None],
        ],
        columns=list(IDENTITY_INPUT_COLUMNS),
    )
    records.to_parquet(settings.world_dir / "identities.parquet", index=False)
    events = pd.DataFrame(
        {"event_id": ["e1", "e2"], "event_type": ["page_view"] * 2,
         "cookie_id": [COOKIE, "ck-other"], "email": [None, "bob@example.org"]}
    )  # fmt: skip
    events.to_parquet(settings.world_dir / "events.parquet", index=False)


def _found(home: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every needle in the bytes of every file under ``home`` (SQLite
    pages, -wal and -shm files included), and in the decoded values of every Parquet file
    (its pages may be compressed)."""
    hits = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
        hits += [(str(path.relative_to(home)), n) for n in needles if n.encode() in data]
    return hits


def _log_validation_run(settings: Settings, ids: list[str]) -> None:
    """A churn model logged to MLflow the way training does, its validation window holding
    the person's snapshots among others."""
    import numpy as np

    from training.churn import evaluate_churn, fit_churn
    from training.registry import log_model_run

    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame(
        {
            "customer_id": [*ids, *(f"other{i:04d}" for i in range(n - len(ids)))],
            "plan": rng.choice(["prepaid", "postpaid_m"], n),
            "tenure_days": rng.integers(10, 2000, n).astype(float),
        }
    )
    frame["label"] = (rng.random(n) < 0.2 + 0.3 * (frame.plan == "prepaid")).astype(int)
    scorer, params = fit_churn(frame, ["plan", "tenure_days"], "churn_v1", max_rounds=20)
    metrics, plots = evaluate_churn(scorer, frame)
    log_model_run(settings, scorer, params=params, metrics=metrics, validation=frame,
                  input_example=frame[["plan", "tenure_days"]].head(3), plots=plots,
                  data_window={"valid_window": "test"})  # fmt: skip


@pytest.mark.slow
def test_erased_merged_person_leaves_no_byte_in_any_file_under_the_home(tmp_path: Path) -> None:
    """A person with an e-mail, a phone, a loyalty card and a cookie, merged from two
    customers, who visited, shopped, was decided for, converted, sits in a model's validation
    window and in the source systems' extracts: after POST /erase's path, none of their
    identifiers or ids is in any file under the home, and this process's normalisers
    remember none of them."""
    from benchmarks.decide import prepare_features
    from serving import outbox
    from serving.deps import load_deps

    settings = Settings(
        home=tmp_path / "home", global_holdout_share=0.0, experiment_holdout_share=0.0
    ).ensure_dirs()
    prepare_features(settings, customers=5)
    deps = load_deps(settings, models=None, bandit=None)
    assert "features" not in deps.missing and "ingest" not in deps.missing, deps.missing

    ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    visit = {"ts": ago, "channel": "web", "event_type": "session_start", "cookie_id": COOKIE}
    first = actions.ingest(visit, deps)["customer_id"]
    decide(DecideRequest(cookie_id=COOKIE, channel="web", context={"page": "/home"}), deps)
    basket = {"ts": ago, "channel": "web", "event_type": "basket_add", "email": EMAIL,
              "loyalty_id": LOYALTY, "product_id": "data_10gb", "value": 10.0}  # fmt: skip
    second = actions.ingest(basket, deps)["customer_id"]
    assert first != second
    outbox.scan_abandoned(deps)  # the abandoned basket: an outbound decision for `second`
    login = {"ts": now().isoformat(), "channel": "app", "event_type": "session_start",
             "phone": PHONE, "loyalty_id": LOYALTY, "cookie_id": COOKIE}  # fmt: skip
    current = actions.ingest(login, deps)["customer_id"]
    assert current in (first, second)
    page = f"/account?email={EMAIL_KEY}&phone={PHONE_E164}"
    r = decide(DecideRequest(email=EMAIL, channel="web", context={"page": page}), deps)
    assert deps.ledger.decision(r.decision_id).customer_id == current
    purchase = {"ts": now().isoformat(), "channel": "web", "event_type": "purchase",
                "email": EMAIL, "product_id": "data_10gb", "value": 10.0}  # fmt: skip
    actions.ingest(purchase, deps)
    actions.record_outcome(
        actions.OutcomeRequest(idempotency_key=f"order-{EMAIL_KEY}", customer_id=first,
                               type="conversion"), deps)  # fmt: skip
    _log_validation_run(settings, [first, second])
    _source_extracts(settings)
    needles = _needles([first, second])
    assert {n for _, n in _found(settings.home, needles)} >= {first, second}  # the search sees

    erased = actions.erase(actions.EraseRequest(customer_id=current), deps)
    assert erased["status"] == "done" and erased["models"] == 2, erased
    assert erased["sources"] == 3, erased  # two identity records and an event: not Bob's

    assert _found(settings.home, needles) == []
    assert _caches_holding() == []
    assert deps.ledger.counts()["decisions"] >= 3  # decisions stay, anonymised, for the counts
    assert list(pd.read_parquet(settings.world_dir / "identities.parquet")["record_id"]) == [
        "crm-2"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["erase"], "error: give a CUSTOMER_ID or --resume (one of them)"),
        (["erase", "c1", "--resume"], "error: give a CUSTOMER_ID or --resume (one of them)"),
    ],
)
def test_erase_command_needs_one_person_or_resume(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from nextbest.cli import app

    result = CliRunner().invoke(app, args)
    assert (result.exit_code, result.stderr.strip()) == (2, message)


def test_erase_command_erases_then_resumes_nothing(private_home: Path) -> None:
    """``nextbest erase ID`` runs POST /erase's path; ``--resume`` then finds nothing pending."""
    from typer.testing import CliRunner

    from nextbest.cli import app

    runner = CliRunner()
    erased = runner.invoke(app, ["erase", "nobody", "--json"])
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.stdout.splitlines()[-1])["status"] == "done"
    resumed = runner.invoke(app, ["erase", "--resume", "--json"])
    assert json.loads(resumed.stdout.splitlines()[-1]) == {"resumed": []}


def test_partial_erasure_is_a_503_and_a_retry_finishes_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails mid-erasure: 503 saying which stores are left (the others are
    erased); the same request again, once the store is back, ends it with 200."""
    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    ev = {"ts": recent, "channel": "app", "event_type": "session_start", "email": "p@ex.com"}
    cid = client.post("/events", json=ev, headers=CHANNEL).json()["customer_id"]
    client.post("/decide", json={"customer_id": cid, "channel": "web"}, headers=CHANNEL)

    def down(person: Any, deps: Deps) -> Any:
        raise ConnectionError("feature store unreachable")

    monkeypatch.setitem(erasure.STEPS, "features", down)
    r = client.post("/erase", json={"customer_id": cid}, headers=ADMIN)
    body = r.json()
    assert r.status_code == 503 and r.headers["retry-after"] == "60", r.text
    assert (body["status"], body["left"], body["field"]) == ("partial", ["features"], "features")
    assert body["error"] == "features: failed: ConnectionError: feature store unreachable"
    assert body["ledger"]["decisions"] == 1 and body["identities"] >= 2, body

    monkeypatch.undo()  # the store is back
    r = client.post("/erase", json={"customer_id": cid}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    assert r.json()["ledger"] == "done earlier" and r.json()["features"]["event_log"] == 1


def test_cli_erase_exits_non_zero_while_part_is_left(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rule for ``nextbest erase``: the result is still the last JSON line, the
    exit code 1 with one line naming what is left; ``--resume`` then finishes it (exit 0)."""
    from typer.testing import CliRunner

    from nextbest.cli import app

    def down(person: Any, deps: Deps) -> Any:
        raise ConnectionError("feature store unreachable")

    monkeypatch.setitem(erasure.STEPS, "features", down)
    runner = CliRunner()
    partial = runner.invoke(app, ["erase", "someone", "--json"])
    result = json.loads(partial.stdout.splitlines()[-1])
    assert (partial.exit_code, result["status"], result["left"]) == (1, "partial", ["features"])
    assert partial.stderr.strip() == (
        f"error: erasure partial ({result['request_id']}: features: failed: ConnectionError: "
        "feature store unreachable); run `nextbest erase --resume`"
    )
    monkeypatch.setitem(erasure.STEPS, "features", lambda person, deps: {"online": 0})
    resumed = runner.invoke(app, ["erase", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout.splitlines()[-1])["resumed"][0]["status"] == "done"

"""Issue 14: /decide through the service's decision batcher, and ``POST /decide/batch``: its
validation table with the exact errors, answers in request order that match single calls,
nothing logged for a bad batch, concurrent /decide calls decided together, and an event loop
that stays free while a PostgreSQL ledger hangs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from serving.decide import DecideRequest
from serving.decision_batcher import DecisionBatcher
from serving.deps import Deps
from serving.schemas import EXAMPLE_REQUEST as EX
from serving.stages import STAGES, StageTimes
from tests.serving.conftest import CHANNEL, real_deps

CHANNELS = "'web', 'app', 'email', 'sms', 'call_centre', 'store' or 'paid_media'"
BAD_BATCHES: list[tuple[dict[str, Any], str, str]] = [
    ({"requests": [EX, {**EX, "channel": "fax"}]}, "requests[1].channel",
     f"Input should be {CHANNELS}"),
    ({"requests": [{**EX, "max_offers": 0}]}, "requests[0].max_offers",
     "Input should be greater than or equal to 1"),
    ({"requests": [EX, EX, {**EX, "colour": 1}]}, "requests[2].colour", "unknown field"),
    ({"requests": [EX, {**EX, "context": {"campaign": "nope"}}]}, "requests[1].context.campaign",
     "unknown experiment 'nope'; declared: nbo"),
    ({"requests": [EX] * 1001}, "requests", "at most 1000 decision requests, got 1001"),
    ({}, "requests", "required"),
    ({"requests": "x"}, "requests", "Input should be a valid array"),
    ({"requests": [EX], "extra": 1}, "extra", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "reason"), BAD_BATCHES)
def test_a_bad_batch_is_a_400_naming_the_item_and_logs_nothing(
    client: TestClient, body: dict[str, Any], field: str, reason: str
) -> None:
    from serving.service import STATE

    before = STATE.deps.ledger.counts()["decisions"]
    r = client.post("/decide/batch", json=body, headers=CHANNEL)
    assert r.status_code == 400
    assert (r.json()["error"], r.json()["field"]) == (f"{field}: {reason}", field)
    assert STATE.deps.ledger.counts()["decisions"] == before


def test_a_batch_answers_in_order_as_single_calls_do(client: TestClient) -> None:
    """Known, anonymous and unknown visitors on several channels: each answer is the kind of
    decision the same request gets from /decide alone, and every one is logged."""
    from serving.service import STATE

    requests = [
        EX,
        {"channel": "app"},
        {"customer_id": "never-seen", "channel": "email"},
        {**EX, "channel": "sms", "max_offers": 2},
        {"cookie_id": "ck-1", "channel": "store"},
    ]
    before = STATE.deps.ledger.counts()["decisions"]
    r = client.post("/decide/batch", json={"requests": requests}, headers=CHANNEL)
    assert r.status_code == 200, r.text
    batch = r.json()
    singles = [client.post("/decide", json=q, headers=CHANNEL).json() for q in requests]

    def kind(d: dict[str, Any]) -> tuple:
        return (d["customer_id"], d["experiment"], d["fallback"], d["reasons"],
                len(d["offers"]) <= 2)  # fmt: skip

    assert [kind(d) for d in batch] == [kind(d) for d in singles]
    assert len({d["decision_id"] for d in batch + singles}) == 2 * len(requests)
    assert STATE.deps.ledger.counts()["decisions"] == before + 2 * len(requests)
    logged = STATE.deps.ledger.logs().set_index("decision_id")
    assert [logged.loc[d["decision_id"], "channel"] for d in batch] == [
        q["channel"] for q in requests
    ]


def test_an_empty_batch_answers_an_empty_list(client: TestClient) -> None:
    r = client.post("/decide/batch", json={"requests": []}, headers=CHANNEL)
    assert (r.status_code, r.json()) == (200, [])


def test_batch_needs_a_key(client: TestClient) -> None:
    r = client.post("/decide/batch", json={"requests": [EX]})
    assert (r.status_code, r.json()["field"]) == (401, "X-API-Key")


def _sizes(deps: Deps) -> tuple[DecisionBatcher, list[int], list[StageTimes]]:
    sizes: list[int] = []
    seen: list[StageTimes] = []

    def observe(times: StageTimes, size: int) -> None:
        sizes.append(size)
        seen.append(times)

    return DecisionBatcher(deps, observe=observe), sizes, seen


def test_concurrent_decisions_are_decided_together(deps: Deps) -> None:
    """Twenty requests at once: the first is decided alone, the rest queue meanwhile and go
    as one batch; every decision is logged, caps counted across the batch."""
    batcher, sizes, seen = _sizes(deps)
    requests = [DecideRequest(customer_id="c-post", channel="email") for _ in range(10)]
    requests += [DecideRequest(customer_id="c-pre", channel="web") for _ in range(10)]

    async def go() -> list[Any]:
        return await asyncio.gather(*(batcher.decide(r) for r in requests))

    answers = asyncio.run(go())
    batcher.close()
    assert [a.customer_id for a in answers] == [r.customer_id for r in requests]
    assert sum(sizes) == 20 and max(sizes) > 1
    assert all(set(t.seconds) == set(STAGES) for t in seen)
    assert deps.ledger.counts()["decisions"] == 20
    logs = deps.ledger.logs()
    emailed = logs[(logs["customer_id"] == "c-post") & (logs["offer_id"] != "no_offer")]
    assert len(emailed) <= 2  # the e-mail cap (2 a week) holds inside a batch
    assert not deps.ledger.pending


def test_a_callers_batch_is_never_split(deps: Deps) -> None:
    """A /decide/batch call's requests go in one batch (one transaction) even past
    ``max_batch``; lone calls queued behind it join up to ``max_batch``."""
    sizes: list[int] = []
    batcher = DecisionBatcher(deps, max_batch=3, observe=lambda _t, n: sizes.append(n))
    web = DecideRequest(customer_id="c-pre", channel="web")

    async def go() -> None:
        await asyncio.gather(
            batcher.decide(web),  # alone: nothing queued yet
            batcher.decide_all([web] * 5),
            batcher.decide(web),
            batcher.decide(web),
            batcher.decide(web),
        )

    asyncio.run(go())
    batcher.close()
    assert sizes == [1, 5, 3]


def test_an_undeclared_campaign_fails_only_its_own_request(deps: Deps) -> None:
    """One request of a shared batch refused (400): the others are decided and logged."""
    from pydantic import ValidationError

    batcher, sizes, _ = _sizes(deps)
    bad = DecideRequest(customer_id="c-pre", channel="web", context={"campaign": "nope"})
    good = DecideRequest(customer_id="c-post", channel="web")
    outcomes = batcher.decide_now([good, bad, good])
    assert isinstance(outcomes[1], ValidationError)
    assert "unknown experiment 'nope'" in str(outcomes[1])
    assert [o.customer_id for o in (outcomes[0], outcomes[2])] == ["c-post", "c-post"]
    assert deps.ledger.counts()["decisions"] == 2 and sizes == [3]


@pytest.mark.slow
def test_the_loop_stays_free_while_a_postgresql_ledger_hangs(
    pg_url: str, tmp_path, profiles: dict
) -> None:  # noqa: ANN001
    """The ledger behind a fault proxy that stops answering mid-exchange: the decision waits
    in the decider thread and ends in the ledger's error once ``bound_silence`` gives up;
    meanwhile the event loop keeps ticking every 10 ms (it would answer /healthz)."""
    from benchmarks.faults import FaultProxy
    from nextbest import db
    from nextbest.settings import Settings

    url = make_url(pg_url)
    with FaultProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(home=tmp_path, ledger_url=proxied)
        deps = real_deps(settings, profiles)
        batcher = DecisionBatcher(deps)
        request = DecideRequest(customer_id="c-post", channel="web")
        previous = db._silence_bound  # noqa: SLF001 - restored after: other tests wait
        db.bound_silence(1.0)
        try:

            async def go() -> tuple[BaseException | None, float, float]:
                await batcher.decide(request)  # connections made while the server answers
                proxy.set("hang")
                start = time.monotonic()
                decision = asyncio.ensure_future(batcher.decide(request))
                gap, last = 0.0, time.monotonic()
                while not decision.done():
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gap, last = max(gap, now - last), now
                return decision.exception(), time.monotonic() - start, gap

            error, waited, gap = asyncio.run(go())
        finally:
            db.bound_silence(previous)
            proxy.set("up")
            batcher.close()
    assert error is not None, "a hung ledger must fail the decision"
    assert waited >= 0.9  # it really waited for the silent server
    assert gap < 0.5, f"the loop stalled {gap:.3f}s"


@pytest.mark.slow
def test_a_real_server_exports_every_stage_on_metrics(tmp_path) -> None:  # noqa: ANN001
    """Decisions on a real ``bentoml serve``: /metrics (BentoML's multi-process endpoint, an
    admin key) has the stage histogram with a count for every stage, and the batch sizes."""
    import re

    import httpx

    from nextbest.settings import Settings
    from serving import run
    from serving.stage_metrics import BATCH_SIZE, STAGE_SECONDS
    from tests.serving.conftest import ADMIN

    settings = Settings(home=tmp_path, workers=1)
    port = run.free_port()
    proc = run.start(settings, port, log=tmp_path / "server.log")
    try:
        run.wait_ready(proc, port, timeout=120)
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):
            assert httpx.post(f"{base}/decide", json=EX, headers=CHANNEL).status_code == 200
        r = httpx.post(f"{base}/decide/batch", json={"requests": [EX] * 4}, headers=CHANNEL)
        assert r.status_code == 200 and len(r.json()) == 4
        text = httpx.get(f"{base}/metrics", headers=ADMIN).text
    finally:
        run.stop(proc)
    line = rf'^{STAGE_SECONDS}_count{{[^}}]*stage="(?P<stage>\w+)"[^}}]*}} (?P<n>\S+)$'
    counts = {m["stage"]: float(m["n"]) for m in re.finditer(line, text, re.M)}
    assert set(counts) == set(STAGES), text[-3000:]
    assert all(n >= 2 for n in counts.values()), counts  # at least the lone calls' batches
    sizes = re.search(rf"^{BATCH_SIZE}_sum(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert sizes is not None and float(sizes.group(1)) == 7.0

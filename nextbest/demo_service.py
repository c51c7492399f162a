"""The demo's service stage: a real ``bentoml serve`` on 127.0.0.1, simulated visits from
every channel sent over HTTP with outcomes drawn from the truth, sample decisions printed,
and one customer's abandoned-basket journey (``nextbest.demo_journeys``).

Split from :mod:`nextbest.demo`, which sequences the stages.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from nextbest.settings import Settings

CHANNEL_KEY_HEADER = "X-API-Key"


def serve_visits(settings: Settings, console: Console, visits: int) -> dict[str, Any]:
    """Real HTTP against a real server: visits from every channel, outcomes drawn from the
    truth, then one customer's abandoned-basket journey (``nextbest.demo_journeys``)."""
    from nextbest.demo_journeys import install_demo_journey, journey_story
    from serving import run
    from simulator.truth import Truth

    truth = Truth.load(settings.world_dir)
    rng = np.random.default_rng(settings.seed)
    frame = truth.sample_visits(rng, visits)
    log = settings.home / "server.log"
    headers = {CHANNEL_KEY_HEADER: settings.channel_keys[0]}
    install_demo_journey(settings)
    web = frame[frame["channel"].isin(["web", "app"]) & frame["login_id"].notna()]
    logins = list(dict.fromkeys(web["login_id"].astype(str)))
    with (
        run.served(settings, log=log, NEXTBEST_JOURNEY_POLL_SECONDS="0.5") as base,
        httpx.Client(base_url=base, headers=headers, timeout=30) as c,
    ):
        shown, samples, offered = _decide_all(c, frame, truth, rng, console)
        _print_samples(console, samples)
        story = journey_story(c, settings, logins[::-1], console)
    return {"decisions": len(frame), "with_offer": offered, "by_channel": shown, **story}


def _decide_all(
    client: httpx.Client, frame: Any, truth: Any, rng: np.random.Generator, console: Console
) -> tuple[dict[str, int], list[dict[str, Any]], int]:
    from rich.progress import Progress

    from benchmarks.replay import visit_request

    shown: dict[str, int] = {}
    samples: list[dict[str, Any]] = []
    offered = 0
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("visits", total=len(frame))
        for visit in frame.itertuples(index=False):
            r = client.post("/decide", json=visit_request(visit).model_dump(exclude_none=True))
            r.raise_for_status()
            d = r.json()
            shown[visit.channel] = shown.get(visit.channel, 0) + 1
            if d["offers"]:
                offered += 1
                top = d["offers"][0]
                p1, p0 = truth.conversion_probs(
                    np.array([visit.person_id]), np.array([visit.at]),
                    np.array([visit.channel]), np.array([top["offer_id"]], dtype=object),
                    np.array([bool(visit.open_basket)]),
                )  # fmt: skip
                if rng.random() < float(p1[0]):
                    client.post(
                        "/outcome",
                        json={"idempotency_key": f"demo:{d['decision_id']}",
                              "decision_id": d["decision_id"], "type": "conversion",
                              "value": float(truth.catalog.get(top["offer_id"]).value)},
                    ).raise_for_status()  # fmt: skip
            if len(samples) < 8 and not any(s["channel"] == visit.channel for s in samples[-2:]):
                samples.append({"channel": visit.channel, **d})
            bar.advance(task)
    return shown, samples, offered


def _print_samples(console: Console, samples: list[dict[str, Any]]) -> None:
    table = Table(title="sample decisions", show_lines=False)
    for col in ("channel", "customer", "arm", "offer", "p(shown)", "why"):
        table.add_column(col, overflow="fold")
    for s in samples:
        top = s["offers"][0] if s["offers"] else None
        table.add_row(
            s["channel"],
            s["customer_id"] or "(unknown visitor)",
            s["arm"],
            top["offer_id"] if top else "-",
            f"{top['probability']:.3f}" if top else "-",
            top["reason"] if top else "; ".join(s["reasons"]) or "holdout: no offer",
        )
    console.print(table)

"""The abandoned_basket journey through a real ``bentoml serve``: a basket event enters the
customer once the hour is up, the runner beside the service shows the banner on the next web
visit (once, under the journey's experiment), the profile shows where the customer is, and a
store purchase ends the journey at once."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from nextbest.settings import Settings
from record.tables import now
from serving import run
from tests.serving.conftest import CHANNEL
from tests.serving.journey_fixtures import EXAMPLES


def _journeys(client: httpx.Client, email: str) -> list[dict]:
    visit = {"ts": now().isoformat(), "channel": "web", "event_type": "session_start",
             "email": email}  # fmt: skip
    cid = client.post("/events", json=visit).json()["customer_id"]
    return client.get(f"/profile/{cid}").json()["journeys"]


@pytest.mark.slow
def test_events_to_journey_to_banner_to_exit_on_a_real_server(tmp_path: Path) -> None:
    data = yaml.safe_load((EXAMPLES / "abandoned_basket.yaml").read_text())
    data["rules"]["holdout_share"] = 0.0
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys" / "abandoned_basket.yaml").write_text(yaml.safe_dump(data))
    settings = Settings(home=tmp_path, workers=1)
    env = {"NEXTBEST_GLOBAL_HOLDOUT_SHARE": "0", "NEXTBEST_EXPERIMENT_HOLDOUT_SHARE": "0",
           "NEXTBEST_JOURNEY_POLL_SECONDS": "0.2"}  # fmt: skip
    log = tmp_path / "server.log"
    email = "basket@example.com"
    with (
        run.served(settings, log=log, **env) as base,
        httpx.Client(base_url=base, headers=CHANNEL, timeout=30) as client,
    ):
        left = {"ts": (now() - timedelta(minutes=61)).isoformat(), "channel": "web",
                "event_type": "basket_add", "email": email, "product_id": "data_10gb",
                "value": 5.0}  # fmt: skip
        r = client.post("/events", json=left)
        assert r.status_code == 200 and r.json()["entries_pending"] == 1, r.text
        deadline = time.monotonic() + 60
        # the runner's round enters the customer at the banner, then runs it: a read between
        # the two sees the banner step, the settled state waits for the e-mail
        while time.monotonic() < deadline:
            view = _journeys(client, email)
            if view and view[0]["step"] != "banner":
                break
            time.sleep(0.3)
        assert [(v["journey"], v["step"]) for v in view] == [("abandoned_basket", "email")]
        assert view[0]["next_contact"]["channel"] == "email"
        shown = client.post("/decide", json={"email": email, "channel": "web"}).json()
        assert (shown["experiment"], shown["arm"]) == ("journey:abandoned_basket", "treatment")
        again = client.post("/decide", json={"email": email, "channel": "web"}).json()
        assert again["experiment"] == "nbo"  # shown once
        bought = {"ts": now().isoformat(), "channel": "store", "event_type": "purchase",
                  "email": " BASKET@example.com", "product_id": "data_10gb",
                  "value": 5.0}  # fmt: skip
        r = client.post("/events", json=bought)
        assert r.json()["journeys_ended"] == 1 and r.json()["journey_goals"] == 1, r.text
        assert _journeys(client, email) == []
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

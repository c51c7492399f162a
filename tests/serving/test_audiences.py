"""Target-group membership on the ingest path, sticky holdouts, and paid-media exports, on a
real ledger, identity graph and event log (profiles from the serving tests' table reader)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from features.paid_media import KEYS_PATH, contact_keys, email_for, phone_for, sha256_hex
from record.tables import now
from serving import actions, audiences
from serving.deps import Deps
from serving.paid_media_export import ExportError, export
from serving.target_groups import get_group

INTENT = {
    "name": "device_intent",
    "holdout_share": 0.0,
    "conditions": [
        {"event": "product_view", "product": "dev_", "op": ">=", "count": 2, "within": "7d"},
        {"event": "purchase", "op": "==", "count": 0, "within": "7d"},
    ],
}
POSTPAID = {
    "name": "postpaid",
    "holdout_share": 0.3,
    "conditions": [{"field": "plan", "op": "in", "value": ["postpaid_m", "postpaid_s"]}],
    "destinations": {
        "google": {"account_id": "111", "list_id": "222"},
        "meta": {"audience_id": "333"},
    },  # fmt: skip
}


def _write_group(deps: Deps, data: dict[str, Any]) -> None:
    folder = Path(deps.settings.home) / "audiences"
    folder.mkdir(exist_ok=True)
    (folder / f"{data['name']}.yaml").write_text(yaml.safe_dump(data))


def _event(deps: Deps, kind: str, at: Any, cid: str, **kw: Any) -> dict:
    return actions.ingest(
        {"ts": at.isoformat(), "event_type": kind, "customer_id": cid, **kw}, deps
    )


@pytest.fixture
def live(deps: Deps) -> Deps:
    """The ingest path writes the event log (no online store here: logged only)."""
    from features.ingest import ingest_event

    deps.ingest = ingest_event
    return deps


def test_a_purchase_takes_a_customer_out_at_once(live: Deps) -> None:
    _write_group(live, INTENT)
    group = get_group(live.settings, "device_intent")
    t = now() - timedelta(hours=2)
    assert _event(live, "product_view", t, "c-post", channel="web", product_id="dev_phone")
    assert audiences.memberships(live, "c-post") == {}  # one view is not enough
    res = _event(live, "product_view", t + timedelta(minutes=5), "c-post", channel="app",
                 product_id="dev_watch")  # fmt: skip
    assert res["audiences_joined"] == ["device_intent"]
    assert audiences.memberships(live, "c-post") == {"device_intent": "treatment"}
    res = _event(live, "purchase", t + timedelta(minutes=30), "c-post", channel="store",
                 product_id="dev_phone", value=299.0)  # fmt: skip
    assert res["audiences_left"] == ["device_intent"]  # before the request returned
    assert audiences.current(live, "device_intent").empty
    # the batch rebuild agrees with the live path
    assert audiences.rebuild(live, group)["members"] == 0
    again = _event(live, "purchase", t + timedelta(minutes=30), "c-post", channel="store",
                   product_id="dev_phone", value=299.0, event_id=res["event_id"])  # fmt: skip
    assert "audiences_left" not in again  # a retried event is applied once


def test_a_bad_group_file_never_fails_an_event(live: Deps) -> None:
    _write_group(live, INTENT)
    (Path(live.settings.home) / "audiences" / "broken.yaml").write_text("name: [")
    res = _event(live, "product_view", now(), "c-post", channel="web", product_id="dev_phone")
    assert res["customer_id"] == "c-post"


def _people(deps: Deps, profiles: dict[str, dict[str, Any]], n: int = 40) -> pd.DataFrame:
    """n postpaid customers, every other one without ad-personalisation consent; GB and DE
    phones in national and international forms, gmail addresses with dots."""
    from tests.serving.conftest import register

    rows = []
    for i in range(n):
        cid = f"p{i:03d}"
        profiles[cid] = {"plan": "postpaid_m", "consent_paid_media": i % 2 == 0}
        phone = f"07700 900{i:03d}" if i % 3 else f"+49 151 2345 6{i:03d}"
        rows.append((cid, f" First.Last{i}@Gmail.com", phone))
    register(deps.graph, *[r[0] for r in rows])
    contacts = pd.DataFrame(rows, columns=["customer_id", "email", "phone"])
    path = deps.settings.feature_dir / KEYS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_keys(contacts, "GB").to_parquet(path)
    return contacts


def _sent(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [json.loads(Path(f).read_text()) for f in result["files"] if f"/{kind}-" in f]


def test_export_sends_consented_treatment_members_only(
    deps: Deps, profiles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from google.ads.datamanager_util import Encoding, Formatter

    contacts = _people(deps, profiles).set_index("customer_id")
    _write_group(deps, POSTPAID)
    group = get_group(deps.settings, "postpaid")
    built = audiences.rebuild(deps, group)
    members = audiences.current(deps, "postpaid").set_index("customer_id")["arm"]
    assert built["members"] == 41  # the 40 and the serving tests' c-post
    holdout = set(members.index[members == "holdout"])
    assert 6 <= len(holdout) <= 20  # 30% of 41, drawn per person
    assert audiences.rebuild(deps, group)["joined"] == 0  # arms are sticky: nothing redrawn

    result = export(deps, group, "google", tmp_path, max_rows=7)
    requests = _sent(result, "add")
    assert len(requests) == -(-result["added_customers"] // 7)  # at most 7 members each
    fmt = Formatter()
    sent: set[str] = set()
    for r in requests:
        assert r["url"].endswith("audienceMembers:ingest") and r["body"]["encoding"] == "HEX"
        assert r["body"]["destinations"][0]["productDestinationId"] == "222"
        assert len(r["body"]["audienceMembers"]) <= 7
        for m in r["body"]["audienceMembers"]:
            sent |= {next(iter(i.values())) for i in m["userData"]["userIdentifiers"]}
    want = {c for c in contacts.index if profiles[c]["consent_paid_media"] and c not in holdout}
    assert result["exported_customers"] == len(want)
    expected = {fmt.process_email_address(contacts.loc[c, "email"], Encoding.HEX) for c in want}
    expected |= {sha256_hex(phone_for("google", contacts.loc[c, "phone"], "GB")) for c in want}
    assert sent == expected
    never = [c for c in contacts.index if c not in want]  # no consent, or in the holdout
    for c in never:
        assert sha256_hex(email_for("google", contacts.loc[c, "email"])) not in sent

    # lift units: every exportable member once, holdout included, in the ledger
    logs = deps.ledger.logs()
    units = logs[logs["experiment"] == "audience:postpaid"]
    assert set(units["arm"]) == {"treatment", "holdout"}
    assert result["new_lift_units"] == len(units) == units["customer_id"].nunique()

    # nothing changed: nothing to send; then one withdraws consent and one leaves the group
    assert export(deps, group, "google", tmp_path)["files"] == []
    gone_consent, gone_plan = sorted(want)[:2]
    profiles[gone_consent]["consent_paid_media"] = False
    profiles[gone_plan]["plan"] = "prepaid"
    audiences.rebuild(deps, group)
    third = export(deps, group, "google", tmp_path)
    assert third["removed_customers"] == 2 and third["added_customers"] == 0
    removed = {
        next(iter(i.values()))
        for r in _sent(third, "remove")
        for m in r["body"]["audienceMembers"]
        for i in m["userData"]["userIdentifiers"]
    }
    assert removed == {
        fmt.process_email_address(contacts.loc[c, "email"], Encoding.HEX)
        for c in (gone_consent, gone_plan)
    } | {sha256_hex(phone_for("google", contacts.loc[c, "phone"], "GB"))
         for c in (gone_consent, gone_plan)}  # fmt: skip
    assert "consent" not in _sent(third, "remove")[0]["body"]


def test_meta_rows_are_what_the_vendor_sdk_hashes(
    deps: Deps, profiles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from facebook_business.adobjects.customaudience import CustomAudience

    contacts = _people(deps, profiles, n=12).set_index("customer_id")
    _write_group(deps, POSTPAID | {"holdout_share": 0.0})
    group = get_group(deps.settings, "postpaid")
    audiences.rebuild(deps, group)
    result = export(deps, group, "meta", tmp_path)
    (request,) = _sent(result, "add")
    assert request["method"] == "POST" and request["url"].endswith("/333/users")
    assert request["body"]["payload"]["schema"] == ["EMAIL", "PHONE"]
    consenting = [c for c in sorted(contacts.index) if profiles[c]["consent_paid_media"]]
    # the SDK hashes raw [email, phone] rows itself: given the international number, its rows
    # equal ours (it cannot read a national one: no default region)
    raw = [[contacts.loc[c, "email"], phone_for("google", contacts.loc[c, "phone"], "GB")]
           for c in consenting]  # fmt: skip
    sdk = CustomAudience.format_params(
        [CustomAudience.Schema.MultiKeySchema.email, CustomAudience.Schema.MultiKeySchema.phone],
        raw,
        is_raw=True,
    )
    assert sorted(request["body"]["payload"]["data"]) == sorted(sdk["payload"]["data"])


def test_export_refuses_more_rows_than_the_platform_takes(deps: Deps, tmp_path: Path) -> None:
    _write_group(deps, POSTPAID)
    group = get_group(deps.settings, "postpaid")
    with pytest.raises(ExportError, match="google takes at most 10000 a request"):
        export(deps, group, "google", tmp_path, max_rows=10_001)
    with pytest.raises(ExportError, match="paid-media keys: .* is missing"):
        export(deps, group, "meta", tmp_path)


def test_joining_a_group_enters_its_journey_and_the_agent_sees_it(live: Deps) -> None:
    from serving.journey_runner import instances

    _write_group(live, INTENT)
    journey = {
        "name": "device_followup",
        "offers": ["device_upgrade"],
        "entry": {"type": "audience", "audience": "device_intent"},
        "goal": {"event": "purchase", "product": "any", "within": "30d"},
        "rules": {"holdout_share": 0.0},
        "steps": [{"id": "email", "type": "message", "channel": "email"}],
    }
    folder = Path(live.settings.home) / "journeys"
    folder.mkdir()
    (folder / "device_followup.yaml").write_text(yaml.safe_dump(journey))
    t = now() - timedelta(hours=1)
    for minutes in (0, 5):
        _event(live, "product_view", t + timedelta(minutes=minutes), "c-post", channel="web",
               product_id="dev_phone")  # fmt: skip
    (inst,) = instances(live.ledger.engine, "c-post")
    assert inst["journey"] == "device_followup" and inst["arm"] == "treatment"
    view = actions.profile("c-post", live)
    assert view.audiences == {"device_intent": "treatment"}
    assert view.preferred_channel is None  # no propensity model promoted here


def test_an_erased_customer_leaves_and_the_next_export_removes_them(
    deps: Deps, profiles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    _people(deps, profiles, n=6)
    _write_group(deps, POSTPAID | {"holdout_share": 0.0})
    group = get_group(deps.settings, "postpaid")
    audiences.rebuild(deps, group)
    first = export(deps, group, "meta", tmp_path)
    assert first["exported_customers"] == 3  # p000, p002, p004 consent
    actions.erase(actions.EraseRequest(customer_id="p002"), deps)
    assert "postpaid" not in audiences.memberships(deps, "p002")
    second = export(deps, group, "meta", tmp_path)
    assert second["removed_customers"] == 1 and second["added_customers"] == 0
    (removal,) = _sent(second, "remove")
    assert removal["method"] == "DELETE" and len(removal["body"]["payload"]["data"]) == 1

"""Paid-media export of a target group: the membership changes since the last export (adds
and removes), as request bodies in each platform's documented upload format, written to files.
No call leaves the machine; a sender uploads them.

Who is exported: the group's treatment members who consent to ad personalisation
(``consent_paid_media``) and have a hashed key for the platform. The holdout never is. Each
export records what the platform now holds (``audience_exported``: key hashes, never raw
contact points), so the next one sends only the difference, and a customer who left the
group, lost consent or moved to... is removed with the keys they were added with.

Units for the lift: the first time a member is exportable, treatment or holdout alike, one
decision row (channel ``paid_media``, experiment ``audience:<name>``) goes into the ledger,
so the report measures the audience's lift over its holdout like every other treatment.

Google: Data Manager API ``audienceMembers:ingest`` / ``:remove``, hex SHA-256
``userIdentifiers`` (at most 10 per member), at most 10,000 members per request. Meta:
Marketing API ``POST`` / ``DELETE /{custom_audience_id}/users`` with a multi-key payload
(``EMAIL``, ``PHONE``, SHA-256), at most 10,000 rows per request.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Column, DateTime, PrimaryKeyConstraint, String, Table, delete, select

from features.paid_media import KEYS_PATH, Platform
from features.schema import CUSTOMER_ID_MAX
from record.tables import DecisionRow, insert_ignore
from serving import audiences
from serving.deps import Deps
from serving.target_groups import TargetGroup

MAX_ROWS: dict[str, int] = {"google": 10_000, "meta": 10_000}  # the platforms' request limits
GOOGLE_IDS_PER_MEMBER = 10
GOOGLE_URL = "https://datamanager.googleapis.com/v1/audienceMembers"
META_URL = "https://graph.facebook.com/v25.0"
META_SCHEMA = {"email": "EMAIL", "phone": "PHONE"}
GOOGLE_FIELD = {"email": "emailAddress", "phone": "phoneNumber"}

audience_exported = Table(
    "audience_exported",
    audiences.metadata,
    Column("audience", String(40), nullable=False),
    Column("platform", String(8), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("kind", String(8), nullable=False),  # email | phone
    Column("key", String(64), nullable=False),  # SHA-256 hex of the platform's normal form
    Column("exported_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("audience", "platform", "customer_id", "key"),
)
audience_units = Table(
    "audience_units",
    audiences.metadata,
    Column("audience", String(40), nullable=False),
    Column("customer_id", String(CUSTOMER_ID_MAX), nullable=False),
    Column("arm", String(16), nullable=False),
    Column("decision_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("audience", "customer_id"),
)


class ExportError(RuntimeError):
    """The export cannot be made; the message names the missing input."""


def platform_keys(deps: Deps, platform: Platform) -> pd.DataFrame:
    """customer_id, kind, key of the platform, from the hashed keys ``features.build`` wrote."""
    path = deps.settings.feature_dir / KEYS_PATH
    if not path.exists():
        raise ExportError(f"paid-media keys: {path} is missing (run `nextbest features build`)")
    keys = pd.read_parquet(path)
    return keys.loc[keys["platform"] == platform, ["customer_id", "kind", "key"]]


def exportable(deps: Deps, members: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """The members who consent to ad personalisation and have a key: customer_id, arm."""
    if members.empty:
        return members.assign(consent=pd.Series(dtype=bool))
    ids = members["customer_id"].tolist()
    consent = audiences.profiles(deps, ids)["consent_paid_media"]
    ok = consent.map(lambda v: v is True or v == 1).reindex(ids).fillna(False).to_numpy()
    has_key = members["customer_id"].isin(keys["customer_id"]).to_numpy()
    return members.loc[ok & has_key, ["customer_id", "arm"]]


def _exported(deps: Deps, audience: str, platform: str) -> pd.DataFrame:
    t = audience_exported
    q = select(t.c.customer_id, t.c.kind, t.c.key).where(
        t.c.audience == audience, t.c.platform == platform
    )
    with deps.ledger.engine.connect() as conn:
        rows = conn.execute(q).all()
    return pd.DataFrame(rows, columns=["customer_id", "kind", "key"])


def _diff(want: pd.DataFrame, have: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(adds, removes) between the keys wanted and the keys the platform holds."""
    on = ["customer_id", "kind", "key"]
    both = want[on].merge(have[on], on=on, how="outer", indicator=True)
    adds = both.loc[both["_merge"] == "left_only", on]
    removes = both.loc[both["_merge"] == "right_only", on]
    return adds.reset_index(drop=True), removes.reset_index(drop=True)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def google_members(keys: pd.DataFrame) -> list[dict[str, Any]]:
    """One AudienceMember per customer: their hashed identifiers (at most 10)."""
    out = []
    for _, g in keys.sort_values(["customer_id", "kind", "key"]).groupby("customer_id"):
        ids = [{GOOGLE_FIELD[k]: v} for k, v in zip(g["kind"], g["key"], strict=True)]
        out.append({"userData": {"userIdentifiers": ids[:GOOGLE_IDS_PER_MEMBER]}})
    return out


def google_bodies(
    group: TargetGroup, keys: pd.DataFrame, remove: bool, max_rows: int
) -> list[dict[str, Any]]:
    """Request bodies of ``audienceMembers:ingest`` (or ``:remove``), at most ``max_rows``
    members each. Consent is stated per request: only consenting customers are in it."""
    ids = group.destinations.get("google", {})
    destination = {
        "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": ids.get("account_id")},
        "productDestinationId": ids.get("list_id"),
    }
    bodies = []
    for part in _chunks(google_members(keys), max_rows):
        body: dict[str, Any] = {"destinations": [destination], "audienceMembers": part}
        body["encoding"] = "HEX"
        if not remove:
            body["consent"] = {
                "adUserData": "CONSENT_GRANTED",
                "adPersonalization": "CONSENT_GRANTED",
            }
            body["termsOfService"] = {"customerMatchTermsOfServiceStatus": "ACCEPTED"}
        bodies.append(body)
    return bodies


def meta_rows(keys: pd.DataFrame) -> list[list[str]]:
    """Multi-key rows [EMAIL, PHONE] per customer: their e-mails and phones paired in order,
    an empty string where one runs out."""
    rows = []
    for _, g in keys.sort_values(["customer_id", "kind", "key"]).groupby("customer_id"):
        emails = g.loc[g["kind"] == "email", "key"].tolist()
        phones = g.loc[g["kind"] == "phone", "key"].tolist()
        rows += [[e or "", p or ""] for e, p in zip_longest(emails, phones)]
    return rows


def meta_bodies(keys: pd.DataFrame, max_rows: int) -> list[dict[str, Any]]:
    schema = [META_SCHEMA["email"], META_SCHEMA["phone"]]
    return [
        {"payload": {"schema": schema, "data": part}} for part in _chunks(meta_rows(keys), max_rows)
    ]


def _requests(
    group: TargetGroup, platform: Platform, keys: pd.DataFrame, remove: bool, max_rows: int
) -> list[dict[str, Any]]:
    """Method, URL and body of each request to send."""
    if keys.empty:
        return []
    if platform == "google":
        url = f"{GOOGLE_URL}:{'remove' if remove else 'ingest'}"
        return [
            {"method": "POST", "url": url, "body": b}
            for b in google_bodies(group, keys, remove, max_rows)
        ]
    audience_id = group.destinations.get("meta", {}).get("audience_id")
    url = f"{META_URL}/{audience_id}/users"
    method = "DELETE" if remove else "POST"
    return [{"method": method, "url": url, "body": b} for b in meta_bodies(keys, max_rows)]


def _unit_rows(
    deps: Deps, group: TargetGroup, units: pd.DataFrame, now: datetime
) -> tuple[list[dict[str, Any]], list[DecisionRow]]:
    """The members exportable for the first time: their unit rows and decision rows."""
    rows, decisions = [], []
    for cid, arm in zip(units["customer_id"], units["arm"], strict=True):
        digest = hashlib.sha256(f"{group.experiment}\x1f{cid}".encode()).hexdigest()[:32]
        decision_id = f"aud-{digest}"
        rows.append({"audience": group.name, "customer_id": cid, "arm": arm,
                     "decision_id": decision_id, "at": now})  # fmt: skip
        decisions.append(
            DecisionRow(
                decision_id=decision_id,
                ts=now,
                customer_id=cid,
                channel="paid_media",
                context={"audience": group.name, "segment": group.name},
                experiment=group.experiment,
                arm=arm,
                offer_id=None,
                propensity=None,
                reason="audience member" if arm == "treatment" else "audience holdout",
            )
        )
    return rows, decisions


def export(
    deps: Deps,
    group: TargetGroup,
    platform: Platform,
    out: Path,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """Write the adds and removes since the last export of ``group`` to ``platform`` under
    ``out/<name>/<platform>/<time>/``, record what the platform now holds and the new lift
    units. Returns counts and the files written."""
    audiences.ensure_tables(deps.ledger.engine)
    limit = max_rows or MAX_ROWS[platform]
    if limit > MAX_ROWS[platform]:
        raise ExportError(f"--max-rows: {platform} takes at most {MAX_ROWS[platform]} a request")
    now = deps.clock()
    keys = platform_keys(deps, platform)
    members = audiences.current(deps, group.name)
    ready = exportable(deps, members, keys)
    treated = ready.loc[ready["arm"] == "treatment", "customer_id"]
    want = keys.loc[keys["customer_id"].isin(treated)]
    have = _exported(deps, group.name, platform)
    adds, removes = _diff(want, have)
    with deps.ledger.engine.connect() as conn:
        seen = set(conn.execute(select(audience_units.c.customer_id).where(
            audience_units.c.audience == group.name)).scalars())  # fmt: skip
    new_units = ready.loc[~ready["customer_id"].isin(seen)]
    unit_rows, decisions = _unit_rows(deps, group, new_units, now)

    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    folder = Path(out) / group.name / platform / stamp
    files: list[str] = []
    for kind, frame in (("add", adds), ("remove", removes)):
        for i, request in enumerate(_requests(group, platform, frame, kind == "remove", limit), 1):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{kind}-{i:04d}.json"
            path.write_text(json.dumps(request, indent=1), encoding="utf-8")
            files.append(str(path))

    t = audience_exported
    with deps.ledger.engine.begin() as conn:
        for cid, key in zip(removes["customer_id"], removes["key"], strict=True):
            conn.execute(delete(t).where(t.c.audience == group.name, t.c.platform == platform,
                                         t.c.customer_id == cid, t.c.key == key))  # fmt: skip
        if len(adds):
            rows = [
                {
                    "audience": group.name,
                    "platform": platform,
                    "customer_id": c,
                    "kind": k,
                    "key": v,
                    "exported_at": now,
                }  # fmt: skip
                for c, k, v in adds.itertuples(index=False)
            ]
            conn.execute(insert_ignore(conn, t), rows)
        if unit_rows:
            conn.execute(insert_ignore(conn, audience_units), unit_rows)
            deps.ledger.record_decisions_in(conn, decisions)
    return {
        "audience": group.name,
        "platform": platform,
        "members": len(members),
        "holdout": int((members["arm"] == "holdout").sum()) if len(members) else 0,
        "no_consent_or_key": len(members) - len(ready),
        "exported_customers": int(treated.nunique()),
        "added_customers": int(adds["customer_id"].nunique()),
        "removed_customers": int(removes["customer_id"].nunique()),
        "added_keys": len(adds),
        "removed_keys": len(removes),
        "new_lift_units": len(unit_rows),
        "max_rows_per_request": limit,
        "folder": str(folder) if files else None,
        "files": files,
    }

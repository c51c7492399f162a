"""Stand-ins for the shipped example journeys (h-defs writes journeys/examples/*.yaml): the
same triggers, steps and goals as issue 13 describes them, so the dialog simulator is
calibrated and tested on all five kinds before the files land."""

from __future__ import annotations

from pathlib import Path

import yaml

from journeys.definition import Journey

EXAMPLES = Path(__file__).resolve().parents[2] / "journeys" / "examples"

ONBOARDING = {
    "name": "onboarding",
    "offers": ["data_addon", "streaming_bundle"],
    "entry": {"type": "lifecycle", "anchor": "sign_up", "after": "0d"},
    "goal": {"event": "purchase", "product": "any", "within": "30d"},
    "rules": {"holdout_share": 0.1},
    "steps": [
        {"id": "welcome", "type": "message", "channel": "email", "next": "wait3"},
        {"id": "wait3", "type": "wait", "duration": "3d", "next": "tips"},
        {"id": "tips", "type": "message", "channel": "app", "next": "wait4"},
        {"id": "wait4", "type": "wait", "duration": "4d", "next": "offer"},
        {"id": "offer", "type": "message", "channel": "email", "next": None},
    ],
}
CHURN_SAVE = {
    "name": "churn_save",
    "offers": ["retention_discount", "loyalty_reward"],
    "entry": {"type": "predictive", "score": "churn_risk", "above": 0.3},
    "goal": {"event": "contract_renewal", "within": "60d"},
    "exit": [{"event": "contract_renewal"}],
    "rules": {"holdout_share": 0.2, "reentry_after": "90d"},
    "steps": [
        {
            "id": "route",
            "type": "split",
            "branches": [
                {"when": [{"score": "churn_risk", "op": ">", "value": 0.5}], "next": "call"}
            ],
            "otherwise": "mail",
        },
        {"id": "call", "type": "message", "channel": "call_centre", "next": None},
        {"id": "mail", "type": "message", "channel": "email", "next": None},
    ],
}
CONTRACT_RENEWAL = {
    "name": "contract_renewal",
    "offers": ["retention_discount", "device_upgrade"],
    "entry": {"type": "calendar", "field": "contract_end", "offset": "-60d"},
    "goal": {"event": "contract_renewal", "within": "60d"},
    "exit": [{"event": "contract_renewal"}],
    "rules": {"holdout_share": 0.1, "quiet_hours": {"sms": "20:00-09:00"}},
    "steps": [
        {"id": "email", "type": "message", "channel": "email", "next": "wait"},
        {"id": "wait", "type": "wait", "duration": "14d", "next": "sms"},
        {"id": "sms", "type": "message", "channel": "sms", "next": None},
    ],
}
WINBACK = {
    "name": "winback",
    "offers": ["loyalty_reward", "data_addon"],
    "entry": {"type": "behavioural", "change": "frequency_drop", "event": "purchase",
              "drop": 0.5, "window": "30d"},
    "goal": {"event": "purchase", "product": "any", "within": "30d"},
    "exit": [{"event": "purchase"}],
    "rules": {"holdout_share": 0.2},
    "steps": [
        {
            "id": "paths",
            "type": "random_split",
            "branches": [
                {"name": "email_only", "share": 0.5, "next": "email"},
                {"name": "best", "share": 0.5, "next": "best"},
            ],
        },
        {"id": "email", "type": "message", "channel": "email", "next": None},
        {"id": "best", "type": "message", "channel": "best_channel",
         "channels": ["email", "sms", "app"], "next": None},
    ],
}  # fmt: skip


def shipped() -> list[Journey]:
    """The five journeys: the example files that exist, stand-ins for the rest."""
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        j = Journey.model_validate(yaml.safe_load(path.read_text()))
        out[j.name] = j
    for d in (ONBOARDING, CHURN_SAVE, CONTRACT_RENEWAL, WINBACK):
        out.setdefault(d["name"], Journey.model_validate(d))
    return list(out.values())

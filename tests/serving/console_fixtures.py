"""A small seeded directory of people for the console tests: one person in three systems with
messy identifiers, and a household whose two members share a landline (the ambiguous case)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nextbest.settings import Settings

AGENT_KEY, MARKETER_KEY, ADMIN_KEY = "agent-dev-key", "marketer-dev-key", "admin-dev-key"
ANN_EMAIL = "ann.smith@example.com"
MESSY_PHONE = "+44 (0)7700-900 123"  # Ann's mobile as a caller might read it out
LANDLINE = "020 7946 0000"  # the Jones household's
RECORDS = pd.DataFrame(
    [
        # record_id, source, first, last, email, phone, loyalty, login, cookie
        ("r1", "crm", "Ann", "Smith", " Ann.Smith@Example.com", "07700 900123", "", "", ""),
        ("r2", "eshop", "Ann", "Smith", ANN_EMAIL, "", "", "ann.smith", ""),
        ("r3", "loyalty", "Ann", "Smyth", "", "+447700900123", "LC-1001", "", ""),
        ("r4", "crm", "Bob", "Jones", "bob@jones.example", LANDLINE, "", "bobj", ""),
        ("r5", "crm", "Carol", "Jones", "carol@jones.example", "02079460000", "", "carolj", ""),
    ],
    columns=[
        "record_id",
        "source",
        "first_name",
        "last_name",
        "email",
        "phone",
        "loyalty_id",
        "login_id",
        "cookie_id",
    ],  # fmt: skip
)


def seed_directory(settings: Settings) -> Path:
    """Write the records as the home's directory CSV and resolve them into the identity graph
    (as ``nextbest identity resolve`` would); the CSV's path."""
    from features.identity import graph_for

    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / "directory.csv"
    RECORDS.to_csv(path, index=False)
    graph_for(settings).resolve(RECORDS.drop(columns=["source"]))
    return path

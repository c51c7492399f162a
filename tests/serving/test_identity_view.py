"""The agent view shows why a customer's records are one person (issue 16)."""

from __future__ import annotations

import pandas as pd

from features.schema import IDENTITY_INPUT_COLUMNS
from serving import actions
from serving.deps import Deps


def test_profile_lists_the_identity_links_and_their_rules(deps: Deps) -> None:
    rows = [
        {"record_id": "v1", "email": "lena.graf@web.de", "phone": "0049 151 44444444",
         "first_name": "Lena", "last_name": "Graf"},
        {"record_id": "v2", "phone": "+49 151 44444444", "first_name": "Lena",
         "last_name": "Graff"},
    ]  # fmt: skip
    frame = pd.DataFrame([{c: r.get(c) for c in IDENTITY_INPUT_COLUMNS} for r in rows])
    cid = deps.graph.resolve(frame)["customer_id"][0]
    view = actions.profile(cid, deps, "web")
    assert [(x["a"], x["b"], x["rule"]) for x in view.identity_links] == [
        ("v1", "v2", "same_mobile")
    ]
    assert actions.profile("c-post", deps, "web").identity_links == []  # known only by id

"""Bad settings name the field and the reason (the CLI turns them into one line)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nextbest.settings import Settings


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("bandit_reward_wait_minutes", "-1", "greater than or equal to 0"),
        ("bandit_reward_wait_minutes", "a day", "valid number"),
        ("bandit_learn_every_seconds", "0", "greater than 0"),
        ("bandit_learn_every_seconds", "-0.5", "greater than 0"),
        ("outcome_future_minutes", "-1", "greater than or equal to 0"),
        ("outcome_grace_days", "a week", "valid number"),
        ("max_money_value", "0", "greater than 0"),
        ("max_money_value", "inf", "finite number"),
    ],
)
def test_bad_settings_name_the_field(name: str, value: str, message: str, monkeypatch) -> None:
    monkeypatch.setenv(f"NEXTBEST_{name.upper()}", value)
    with pytest.raises(ValidationError) as exc:
        Settings()
    err = exc.value.errors()[0]
    assert err["loc"] == (name,) and message in err["msg"], err

"""``nextbest demo --serve`` prints the console's address and a key per role."""

from __future__ import annotations

from nextbest.demo_serve import console_lines
from nextbest.settings import Settings


def test_the_console_address_and_a_key_for_each_role() -> None:
    lines = console_lines(Settings(), 3000)
    assert lines[0].startswith("console: http://127.0.0.1:3000/console")
    roles = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert roles == {
        "agent": "agent-dev-key",
        "clerk": "clerk-dev-key",
        "marketer": "marketer-dev-key",
        "admin": "admin-dev-key",
    }

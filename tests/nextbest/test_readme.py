"""The README's settings table is the settings' documentation: every setting is in it."""

from __future__ import annotations

import re

from nextbest.settings import PROJECT_ROOT, Settings


def _configuration_table() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


def test_every_setting_has_a_row_in_the_readme() -> None:
    documented = set(re.findall(r"`(NEXTBEST_[A-Z_]+)`", _configuration_table()))
    settings = {f"NEXTBEST_{name.upper()}" for name in Settings.model_fields}
    assert sorted(settings - documented) == []
    assert sorted(documented - settings) == []  # no row for a setting that is gone

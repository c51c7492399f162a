"""The serving commands' bad input: exit 2 and one line naming the option."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from nextbest.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "decide", "--seconds", "0"], "error: --seconds must be in (0, 30], got 0.0"),
        (["bench", "decide", "--seconds", "31"], "error: --seconds must be in (0, 30], got 31.0"),
        (["bench", "decide", "--concurrency", "0"], "error: --concurrency must be >= 1, got 0"),
        (["bench", "decide", "--workers", "0"], "error: --workers must be >= 1, got 0"),
        (["serve", "--workers", "0"], "error: --workers must be >= 1, got 0"),
        (["bench", "soak", "--minutes", "0"], "error: --minutes must be in (0, 1440], got 0.0"),
        (["bench", "soak", "--rate", "-1"], "error: --rate must be > 0, got -1.0"),
        (["bench", "soak", "--customers", "0"], "error: --customers must be >= 1, got 0"),
        (["bench", "soak", "--workers", "0"], "error: --workers must be >= 1, got 0"),
        (["bench", "faults", "--seconds", "0"], "error: --seconds must be in (0, 60], got 0.0"),
        (["bench", "faults", "--seconds", "61"], "error: --seconds must be in (0, 60], got 61.0"),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message

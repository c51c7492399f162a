"""The import contracts of pyproject.toml hold (what `make lint` checks, here in `make test` so
CI checks them too): the layers point one way and no two sibling modules import each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nextbest.settings import PROJECT_ROOT


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:]
    assert "0 broken" in run.stdout

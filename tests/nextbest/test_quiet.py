"""Dependencies' deprecation warnings stay out of a newcomer's output (issue 15, item 10);
our own and every other warning still show."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nextbest.quiet import from_dependency
from nextbest.settings import PROJECT_ROOT

VENV = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("category", "filename", "dropped"),
    [
        (DeprecationWarning, f"{VENV}/_bentoml_sdk/io_models.py", True),  # PydanticDeprecated...
        (DeprecationWarning, f"{VENV}/mlflow/store/tracking/sqlalchemy_store.py", True),
        (PendingDeprecationWarning, "/usr/lib/python3/dist-packages/tornado/ioloop.py", True),
        (DeprecationWarning, "/work/nextbest/serving/decide.py", False),  # our call: ours to fix
        (UserWarning, f"{VENV}/mlflow/models/signature.py", False),  # not a deprecation
        (RuntimeWarning, f"{VENV}/numpy/lib/nanfunctions.py", False),
    ],
)
def test_only_dependencies_deprecations_are_dropped(
    category: type[Warning], filename: str, dropped: bool
) -> None:
    assert from_dependency(category, filename) is dropped


SCRIPT = """
import warnings
import nextbest.cli  # installs the filter, as every `nextbest` command does
import feast.feature_store  # puts simplefilter("once", DeprecationWarning) in front of all
for text, where in [("theirs", "/v/lib/python3.11/site-packages/pkg/mod.py"),
                    ("ours", "/work/serving/mod.py")]:
    warnings.warn_explicit(text, DeprecationWarning, where, 1, module="m")
"""


@pytest.mark.slow
def test_the_cli_hides_them_even_after_feast_changes_the_filters() -> None:
    """Feast's import-time catch-all is why ``filterwarnings(module=...)`` would not hold."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "ours" in out.stderr and "theirs" not in out.stderr, out.stderr

"""Keep the dependencies' deprecation warnings out of a newcomer's output.

``nextbest demo`` printed warnings about our dependencies' own code (BentoML on Pydantic,
MLflow on SQLAlchemy, pathspec, tornado under BentoML's process manager): nothing a user can
act on. A ``warnings.filterwarnings(module=...)`` per package does not hold: importing
``feast.feature_store`` runs ``warnings.simplefilter("once", DeprecationWarning)``, which puts
a catch-all filter in front of every earlier one, and Feast is imported lazily, deep inside
commands. So the filter is on the warning's source instead: a deprecation warning attributed
to a file of an installed package (``site-packages``) is not shown; one attributed to our code
(a deprecated call we make) still is, and so is every other category.
"""

from __future__ import annotations

import warnings
from pathlib import PurePath
from typing import Any, TextIO

DEPENDENCY_DIRS = frozenset({"site-packages", "dist-packages"})
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning)


def from_dependency(category: type[Warning], filename: str) -> bool:
    """A deprecation warning raised (as attributed by its stack level) in an installed package."""
    return issubclass(category, DEPRECATIONS) and not DEPENDENCY_DIRS.isdisjoint(
        PurePath(filename).parts
    )


def quiet_dependencies() -> None:
    """Wrap ``warnings.showwarning`` (once per process) so dependencies' deprecation warnings
    are dropped; every other warning is shown as before."""
    shown = warnings.showwarning
    if getattr(shown, "_nextbest_quiet", False):
        return

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> Any:
        if from_dependency(category, filename):
            return None
        return shown(message, category, filename, lineno, file, line)

    showwarning._nextbest_quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning

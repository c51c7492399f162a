"""Build the decision service into a Bento: its code, its Python packages and the promoted
models (pinned at the service's class scope), as ``[tool.bentoml.build]`` in pyproject.toml
describes it. ``bentoml containerize`` turns the result into an image.

The build runs in a child process with BENTOML_HOME set to the project's store, so the
service module pins exactly the champions of this home.
"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from nextbest.settings import PROJECT_ROOT, Settings
from serving.run import BENTOML, server_env


class BentoBuildError(RuntimeError):
    """``bentoml build`` failed; the message carries the end of its output."""


def build_bento(settings: Settings) -> dict[str, Any]:
    """Build the Bento; returns its tag, folder and the model tags it carries."""
    cmd = [str(BENTOML), "build", "-f", "pyproject.toml", "-o", "tag", str(PROJECT_ROOT)]
    done = subprocess.run(
        cmd, cwd=PROJECT_ROOT, env=server_env(settings), capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BentoBuildError(f"bentoml build exited {done.returncode}: {' | '.join(tail)}")
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":", 1)
    folder = settings.bentoml_home / "bentos" / name / version
    info = yaml.safe_load((folder / "bento.yaml").read_text())
    models = [m["tag"] for s in info.get("services", []) for m in s.get("models", [])]
    return {"tag": tag, "path": str(folder), "models": sorted(models)}

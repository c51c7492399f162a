"""Routes beside the decision path: the marketers' report (any key) and model promotion
(admin keys only; ``serving.auth`` checks the key before these run).

Both are slow, rare calls (a report reads the whole ledger; a promotion scores two models on
a validation window), so they run in a thread and never stall ``/decide``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from serving.deps import Deps


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status)


async def report(request: Request, deps: Deps) -> Response:
    """``GET /reports``: the self-contained HTML report; ``?format=json`` for its numbers."""
    from experiments.report import build_report
    from experiments.report_charts import report_html
    from experiments.report_units import ReportError

    fmt = request.query_params.get("format", "html")
    if fmt not in ("html", "json"):
        return _error(400, "format", f"must be html or json, got {fmt!r}")
    try:
        if fmt == "json":
            data = await asyncio.to_thread(build_report, deps.settings)
            return Response(data.model_dump_json(), media_type="application/json")
        return HTMLResponse(await asyncio.to_thread(report_html, deps.settings))
    except ReportError as exc:
        return _error(404, "report", str(exc))


async def promote(request: Request, deps: Deps) -> JSONResponse:
    """``POST /promote/{model}``: the same gate as ``nextbest promote``; when the challenger
    wins, this worker swaps in the new champion at once (other workers on their restart)."""
    from training.promotion import promote as promote_model
    from training.registry import RegistryError, UnknownModel

    model = request.path_params["model"]
    try:
        decision = await asyncio.to_thread(promote_model, deps.settings, model)
    except RegistryError as exc:
        field, _, reason = str(exc).partition(": ")
        status = 400 if isinstance(exc, UnknownModel) else 409  # a bad name, or nothing to promote
        return _error(status, field or "model", reason or str(exc))
    body: dict[str, Any] = decision.model_dump()
    if decision.promoted and model == "bandit":  # as the learner's tick would, at once
        from serving.learner import adopt_promoted

        body["reloaded"] = await asyncio.to_thread(adopt_promoted, deps) is not None
    elif decision.promoted:
        body["reloaded"] = await asyncio.to_thread(reload_models, deps)
    return JSONResponse(body)


def reload_models(deps: Deps) -> bool:
    """Load the promoted models into this worker; on failure the old ones keep serving."""
    from training.scoring import load_bundle

    try:
        models = load_bundle(deps.settings)
    except Exception as exc:  # noqa: BLE001 - the reason is reported, serving goes on
        deps.missing["models"] = f"reload failed: {type(exc).__name__}: {exc}"[:200]
        return False
    if models is None:
        return False
    deps.models = models
    deps.missing.pop("models", None)
    return True


def routes(deps_of: Callable[[], Deps]) -> list[Route]:
    """The routes, reading the worker's deps at request time (they load after import)."""

    async def _report(request: Request) -> Response:
        return await report(request, deps_of())

    async def _promote(request: Request) -> JSONResponse:
        return await promote(request, deps_of())

    return [
        Route("/reports", _report, methods=["GET"]),
        Route("/promote/{model}", _promote, methods=["POST"]),
    ]

"""Routes beside the decision path: the marketers' report (any key; its refresh and model
promotion admin keys only; ``serving.auth`` checks the key before these run).

A report reads the whole ledger, so it is built by a process of its own (``serving.reports``)
and this only serves the last one; a promotion scores two models on a validation window, in
a thread, so neither stalls ``/decide``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving import reports
from serving.deps import Deps


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}", "field": field}, status)


async def report(request: Request, deps: Deps) -> Response:
    """``GET /reports``: the last built HTML report (``?format=json`` for its numbers), with
    its build time in ``X-Report-Built-At``. Never built here (``serving.reports``): before
    the first build a 503 says one is under way or how to start one."""
    fmt = request.query_params.get("format", "html")
    if fmt not in reports.FILES:
        return _error(400, "format", f"must be html or json, got {fmt!r}")
    settings = deps.settings
    found = await asyncio.to_thread(reports.served, settings, fmt)
    if found is not None:
        body, built_at = found
        media = "text/html; charset=utf-8" if fmt == "html" else "application/json"
        return Response(body, media_type=media, headers={"X-Report-Built-At": built_at})
    status = await asyncio.to_thread(reports.read_status, settings)
    if status and status.get("error"):  # the last build found nothing to report: why, until
        return _error(404, "report", status["error"])  # a build succeeds (one may be under way)
    if await asyncio.to_thread(reports.building, settings):
        busy = _error(503, "report", "being built; try again shortly")
        busy.headers["Retry-After"] = "30"
        return busy
    return _error(503, "report", "not built yet; an admin can POST /reports/refresh")


async def refresh_report(request: Request, deps: Deps) -> JSONResponse:
    """``POST /reports/refresh`` (admin): start a build in a process of its own, answer at once."""
    started = await asyncio.to_thread(reports.builder_for(deps.settings).start)
    last = await asyncio.to_thread(reports.last_attempt, deps.settings)
    body = {
        "started": started,
        "status": "building" if started else "already building",
        "last_built_at": reports.iso(last) if last else None,
    }
    return JSONResponse(body, 202)


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
    elif decision.promoted and model != "clv":  # CLV reaches decisions through the profile
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

    async def _refresh(request: Request) -> JSONResponse:
        return await refresh_report(request, deps_of())

    async def _promote(request: Request) -> JSONResponse:
        return await promote(request, deps_of())

    return [
        Route("/reports", _report, methods=["GET"]),
        Route("/reports/refresh", _refresh, methods=["POST"]),
        Route("/promote/{model}", _promote, methods=["POST"]),
    ]

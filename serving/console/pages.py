"""The console's routes: server-rendered pages (Jinja2) for agents, clerks and marketers.

Every page checks the session cookie (``serving.console.access``) and the role, every POST
its CSRF token, and every page view or action is one access-log line naming the console user.
Actions call the functions behind ``/events``, ``/outcome`` and ``/journeys/{action}``, so a
console action is what a channel's call would be. Identifiers searched for travel only in a
POST body; URLs carry customer ids at most.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving import actions, notes
from serving.console import views
from serving.console.access import (
    COOKIE,
    CUSTOMER_ROLES,
    MARKETER_ROLES,
    ConsoleUser,
    csrf_ok,
    log_access,
    new_session,
    session_of,
    user_of_key,
)
from serving.console.directory import find
from serving.deps import Deps
from serving.unavailable import Refused

HERE = Path(__file__).resolve().parent
PRE_COOKIE = "nextbest_console_pre"  # the sign-in form's CSRF token (double submit)
MAX_FORM_BYTES = 16_384
ANSWERS = ("accepted", "declined", "callback")
# the console's own files only; frames only from itself (the uplift report)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'"
)
REPORT_CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'"  # noqa: E501 - the report inlines Plotly

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: Any) -> str:
    if value is None:
        return "-"
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _minutes(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return "under a minute"
    if value < 120:
        return f"{value:.0f} min"
    return f"{value / 60:.1f} h" if value < 48 * 60 else f"{value / 1440:.0f} days"


def _num(value: Any) -> Any:
    """A float as people read it (17.44, not 17.44417652717165); anything else as it is."""
    return f"{value:,.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else value


env.filters["when"] = _when
env.filters["num"] = _num
env.filters["minutes"] = _minutes


class Page:
    """One request's console context: the deps, the signed-in person, the access log line."""

    def __init__(self, request: Request, deps: Deps) -> None:
        self.request, self.deps = request, deps
        self.who = session_of(request.cookies.get(COOKIE), deps.settings)

    def render(self, template: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(template).render(who=self.who, **ctx)
        return self.done(HTMLResponse(html, code))

    def done(self, response: Response, csp: str = CSP) -> Response:
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        log_access(self.who, self.request.method, self.request.url.path, response.status_code)
        return response

    def redirect(self, to: str) -> Response:
        return self.done(RedirectResponse(to, 303))

    def error(self, status: int, message: str) -> HTMLResponse:
        return self.render("error.html", status, status=status, message=message)


async def _form(request: Request) -> dict[str, str] | None:
    """The form's fields, or None when the body is too large to be one of ours."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_FORM_BYTES):
        return None
    form = await request.form(max_files=0, max_fields=50)
    return {k: v for k, v in form.items() if isinstance(v, str)}


Handler = Callable[[Page], Awaitable[Response]]


def guarded(roles: tuple[str, ...], deps_of: Callable[[], Deps]) -> Callable[[Handler], Any]:
    """The session and role check of every page: no session -> the sign-in form (401);
    another role's page -> 403; a POST without its CSRF token -> 403."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            deps = deps_of()
            if deps is None:
                return HTMLResponse("starting", 503)
            page = Page(request, deps)
            if page.who is None:  # the sign-in form in place (a 401, for machines)
                return await signin_page(request, deps, status=401)
            if not page.who.may(roles):  # type: ignore[arg-type]
                return page.error(403, f"page: your role ({page.who.role}) may not open this page")
            if request.method == "POST":
                form = await _form(request)
                if form is None:
                    return page.error(413, f"body: larger than {MAX_FORM_BYTES} bytes")
                token = form.get("csrf") or request.headers.get("x-csrf-token")
                if not csrf_ok(page.who, token):
                    return page.error(403, "csrf: missing or wrong form token; reload the page")
                page.form = form  # type: ignore[attr-defined]
            try:
                return await handler(page)
            except ValidationError as exc:
                err = exc.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "form"
                return page.error(400, f"{field}: {err['msg']}")
            except Refused as exc:
                body = exc.body if hasattr(exc, "body") else {}
                return page.error(exc.status, str(body.get("error") or exc))

        return endpoint

    return wrap


# --- sign-in ----------------------------------------------------------------------------------


def _home_of(who: ConsoleUser) -> str:
    return "/console/search" if who.may(CUSTOMER_ROLES) else "/console/offers"


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly and SameSite=Strict always; Secure when the console is reached over HTTPS
    (a proxy's TLS in front), not on plain http://127.0.0.1 where browsers would drop it."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def signin_page(request: Request, deps: Deps, error: str = "", status: int = 200) -> Response:
    page = Page(request, deps)
    if page.who is not None and not error:
        return page.redirect(_home_of(page.who))
    token = secrets.token_urlsafe(24)
    response = page.render("signin.html", status, csrf=token, error=error)
    _cookie(request, response, PRE_COOKIE, token, 600)
    return response


async def signin(request: Request, deps: Deps) -> Response:
    form = await _form(request)
    if form is None:
        return await signin_page(request, deps, "body: too large", 413)
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or not secrets.compare_digest(pre, form.get("csrf", "")):
        return await signin_page(request, deps, "csrf: the form expired; sign in again", 403)
    found = user_of_key(form.get("key", "").strip(), deps.settings)
    if found is None:
        return await signin_page(request, deps, "key: not a console key", 401)
    who, cookie = new_session(*found, deps.settings)
    page = Page(request, deps)
    page.who = who
    response = page.redirect(_home_of(who))
    _cookie(request, response, COOKIE, cookie, deps.settings.console_session_minutes * 60)
    response.delete_cookie(PRE_COOKIE, path="/console")
    return response


async def signout(page: Page) -> Response:
    response = page.redirect("/console/signin")
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- agents and clerks ------------------------------------------------------------------------


async def search_page(page: Page) -> Response:
    return page.render("search.html", query=None, candidates=None)


async def search(page: Page) -> Response:
    text = page.form.get("q", "").strip()  # type: ignore[attr-defined]
    if not text:
        return page.render(
            "search.html",
            400,
            query="",
            candidates=None,
            error="q: type an e-mail, phone, card, login or customer id",
        )
    if len(text) > 256:
        return page.render(
            "search.html", 400, query="", candidates=None, error="q: at most 256 characters"
        )
    found = await asyncio.to_thread(find, text, page.deps)
    if len(found) == 1:
        return page.redirect(f"/console/customer/{found[0].customer_id}")
    return page.render("search.html", query=text, candidates=found)


async def customer_page(page: Page) -> Response:
    cid = page.request.path_params["customer_id"]
    done = page.request.query_params.get("done", "")
    who = page.who
    # after an action the conversation's offers stay; a plain visit decides anew
    data = await asyncio.to_thread(
        views.customer, cid, page.deps, who.channel, who.user, fresh=not done
    )
    return page.render("customer.html", c=data, done=done, catalogue=page.deps.offers())


async def customer_live(page: Page) -> Response:
    """The live part of the page, polled by the page's script: no decision, no access line."""
    cid = page.request.path_params["customer_id"]
    data = await asyncio.to_thread(views.live, cid, page.deps)
    html = env.get_template("_live.html").render(who=page.who, c={"customer_id": cid, **data})
    response = HTMLResponse(html)
    response.headers["Cache-Control"] = "no-store"
    return response


def _event(page: Page, cid: str, event_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"console-{uuid.uuid4().hex}",
        "ts": datetime.now(UTC).isoformat(),
        "channel": page.who.channel,
        "event_type": event_type,  # type: ignore[union-attr]
        "customer_id": cid,
        **fields,
    }


async def record_intent(page: Page) -> Response:
    """A purchase intent per product chosen, through the function behind ``POST /events``;
    the note beside them (``serving.notes``)."""
    cid = page.request.path_params["customer_id"]
    form = await page.request.form()
    products = [p for p in form.getlist("product") if isinstance(p, str) and p]
    note = page.form.get("note", "").strip()  # type: ignore[attr-defined]
    if not products:
        return page.error(400, "product: choose at least one product")
    if len(note) > 500:
        return page.error(400, "note: at most 500 characters")
    known = {o.product_id for o in page.deps.offers() if o.product_id}
    for p in products:
        if p not in known:
            return page.error(400, f"product: {p!r} is not in the catalogue")
    for p in products:
        await asyncio.to_thread(
            actions.ingest, _event(page, cid, "purchase_intent", product_id=p), page.deps
        )
    text = f"{', '.join(products)}" + (f": {note}" if note else "")
    await asyncio.to_thread(
        notes.add,
        page.deps.ledger.engine,
        cid,
        page.who.user,
        "intent",  # type: ignore[union-attr]
        datetime.now(UTC),
        text,
    )
    return page.redirect(f"/console/customer/{cid}?done=intent")


async def record_answer(page: Page) -> Response:
    """The customer's answer to an offer: accepted is a conversion through the function
    behind ``POST /outcome`` (once per decision); declined and callback are kept as notes."""
    cid = page.request.path_params["customer_id"]
    form: dict[str, str] = page.form  # type: ignore[attr-defined]
    answer, decision_id, offer_id = (
        form.get("answer"),
        form.get("decision_id"),
        form.get("offer_id"),
    )
    if answer not in ANSWERS:
        return page.error(400, f"answer: must be one of {', '.join(ANSWERS)}")
    offer = next((o for o in page.deps.offers() if o.id == offer_id), None)
    if offer is None:
        return page.error(400, "offer_id: no such offer in the catalogue")
    if answer == "accepted":
        req = actions.OutcomeRequest(
            idempotency_key=f"console:{decision_id}:{offer_id}:accepted",
            decision_id=decision_id or None,
            customer_id=None if decision_id else cid,
            type="conversion",
            value=float(offer.value),
            offer_id=offer_id,
        )
        await asyncio.to_thread(actions.record_outcome, req, page.deps)
    else:
        await asyncio.to_thread(
            notes.add,
            page.deps.ledger.engine,
            cid,
            page.who.user,
            answer,  # type: ignore[union-attr, arg-type]
            datetime.now(UTC),
            form.get("note", ""),
            decision_id,
            offer_id,
        )
    return page.redirect(f"/console/customer/{cid}?done={answer}")


async def journey_action(page: Page) -> Response:
    """Pause, resume or end the customer's journey: the function behind ``/journeys/{action}``."""
    from serving.journey_agent import JourneyAction, act

    cid = page.request.path_params["customer_id"]
    form: dict[str, str] = page.form  # type: ignore[attr-defined]
    req = JourneyAction(
        customer_id=cid, journey=form.get("journey", ""), reason=form.get("reason", "")[:160]
    )
    await asyncio.to_thread(act, form.get("action", ""), req, page.deps, page.who.user)  # type: ignore[union-attr]
    return page.redirect(f"/console/customer/{cid}?done=journey")


async def erase_customer(page: Page) -> Response:
    """Admins only: the erasure ``POST /erase`` runs."""
    cid = page.request.path_params["customer_id"]
    if page.form.get("confirm") != cid:  # type: ignore[attr-defined]
        return page.error(400, "confirm: type the customer id to confirm the erasure")
    result = await asyncio.to_thread(
        actions.erase, actions.EraseRequest(customer_id=cid), page.deps
    )
    return page.render("erased.html", result=result)


# --- marketers --------------------------------------------------------------------------------


async def offers_page(page: Page) -> Response:
    return page.render("offers.html", cat=await asyncio.to_thread(views.catalogue, page.deps))


async def journeys_page(page: Page) -> Response:
    return page.render("journeys.html", j=await asyncio.to_thread(views.journeys, page.deps))


async def uplift_page(page: Page) -> Response:
    from serving import reports

    status = await asyncio.to_thread(reports.read_status, page.deps.settings)
    found = await asyncio.to_thread(reports.served, page.deps.settings, "html")
    return page.render("uplift.html", built_at=found[1] if found else None, status=status)


async def uplift_report(page: Page) -> Response:
    from serving import reports

    found = await asyncio.to_thread(reports.served, page.deps.settings, "html")
    if found is None:
        return page.error(404, "report: not built yet")
    return page.done(HTMLResponse(found[0]), REPORT_CSP)


async def models_page(page: Page) -> Response:
    try:
        rows = await asyncio.to_thread(views.models, page.deps)
        error = None
    except Exception as exc:  # noqa: BLE001 - the registry unreachable: say so on the page
        rows, error = [], f"registry: {type(exc).__name__}: {exc}"[:300]
    return page.render(
        "models.html", rows=rows, error=error, mlflow=page.deps.settings.mlflow_ui_url
    )


async def promote_model(page: Page) -> Response:
    """Admins only: the promotion gate of ``POST /promote/{model}``."""
    from serving.admin import reload_models
    from training.promotion import promote
    from training.registry import RegistryError

    model = page.request.path_params["model"]
    try:
        decision = await asyncio.to_thread(promote, page.deps.settings, model)
    except RegistryError as exc:
        return page.error(409, str(exc))
    if decision.promoted and model != "bandit":
        await asyncio.to_thread(reload_models, page.deps)
    return page.render("promoted.html", d=decision)


async def index(page: Page) -> Response:
    return page.redirect(_home_of(page.who))  # type: ignore[arg-type]


def routes(deps_of: Callable[[], Deps]) -> list[Route | Mount]:
    """The console under ``/console``; ``serving.auth`` leaves its key checks to this."""
    anyone = ("agent", "clerk", "marketer", "admin")
    cust, mkt, adm = (guarded(r, deps_of) for r in (CUSTOMER_ROLES, MARKETER_ROLES, ("admin",)))

    async def _signin_page(request: Request) -> Response:
        return await signin_page(request, deps_of())

    async def _signin(request: Request) -> Response:
        return await signin(request, deps_of())

    c = "/console/customer/{customer_id}"
    return [
        Route("/console", guarded(anyone, deps_of)(index)),
        Route("/console/signin", _signin_page, methods=["GET"]),
        Route("/console/signin", _signin, methods=["POST"]),
        Route("/console/signout", guarded(anyone, deps_of)(signout), methods=["POST"]),
        Route("/console/search", cust(search_page), methods=["GET"]),
        Route("/console/search", cust(search), methods=["POST"]),
        Route(c, cust(customer_page), methods=["GET"]),
        Route(c + "/live", cust(customer_live), methods=["GET"]),
        Route(c + "/intent", cust(record_intent), methods=["POST"]),
        Route(c + "/answer", cust(record_answer), methods=["POST"]),
        Route(c + "/journey", cust(journey_action), methods=["POST"]),
        Route(c + "/erase", adm(erase_customer), methods=["POST"]),
        Route("/console/offers", mkt(offers_page)),
        Route("/console/journeys", mkt(journeys_page)),
        Route("/console/uplift", mkt(uplift_page)),
        Route("/console/uplift/report", mkt(uplift_report)),
        Route("/console/models", mkt(models_page)),
        Route("/console/models/{model}/promote", adm(promote_model), methods=["POST"]),
        Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
    ]

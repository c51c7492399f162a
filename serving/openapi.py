"""The OpenAPI document channels code against: BentoML's, corrected in this one place.

BentoML 1.4 builds the document from the ``@bentoml.api`` methods only, so it omitted the
routes of our Starlette app (``/profile``, ``/journeys``, ``/outbox``, ``/reports`` and its
refresh, ``/promote``); it declared no API key, no 401/403/413/415/503, an error body whose
``detail`` is a string (a list is sent) and a 500 as a documented answer; and its inline request and
response schemas drop the ``null`` of optional fields (``customer_id``, ``decision_id``) that
its own ``components`` keep. ``document`` takes BentoML's and fixes each of those, declaring
OpenAPI 3.1 so Pydantic's JSON Schemas (``null`` as a type, numeric ``exclusiveMinimum``)
are valid as they are. Served at ``/docs.json`` (any key) and ``/docs``.

Not in the document: the pages that serve it (``/docs.json``, ``/docs``, the Swagger UI at
``/`` with its ``/static_content/``) and BentoML's own ``/schema.json``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from features.schema import CHANNELS
from journeys.definition import OUTBOUND_CHANNELS
from serving.auth import ADMIN_PATHS, PUBLIC_PATHS

REF = "#/components/schemas/{model}"
SCHEME = "ApiKey"
KEY_HEADER = "X-API-Key"
ERROR = {
    "type": "object",
    "title": "Error",
    "description": "Every refusal: `error` names the field and the reason, `field` the field "
    "(`body`, `Content-Type`, `X-API-Key`, a request field, or the part that is down for a "
    "503); a failed validation also lists every problem in `detail`.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "field": {"type": "string"},
        "detail": {"type": "array", "items": {"type": "object"}},
    },
}
REASONS = {
    400: "The request is malformed: a field is missing or invalid, or the body is not JSON",
    401: "No X-API-Key header, or a key nobody holds",
    403: "A channel key on an admin route",
    404: "No such customer, decision, journey instance or report",
    409: "A reused key with a different payload, or nothing to promote",
    413: "The body is larger than NEXTBEST_MAX_BODY_BYTES",
    415: "The body is not application/json",
    503: "A part the request needs (ledger, features, ...) is unavailable; retry later",
}
JSON_BODY = (400, 413, 415)
# every operation's refusals besides 401 (every keyed route) and 403 (admin routes)
STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/decide"): (*JSON_BODY, 503),
    ("post", "/decide/batch"): (*JSON_BODY, 503),
    ("post", "/outcome"): (*JSON_BODY, 404, 409, 503),
    ("post", "/events"): (*JSON_BODY, 409, 503),
    ("post", "/erase"): (*JSON_BODY, 404, 503),
    ("get", "/profile/{customer_id}"): (400, 404, 503),
    ("post", "/journeys/{action}"): (*JSON_BODY, 404, 503),
    ("get", "/outbox"): (400, 503),
    ("get", "/reports"): (400, 404, 503),
    ("post", "/reports/refresh"): (),
    ("post", "/promote/{model}"): (400, 409, 503),
    ("get", "/metrics"): (),
    ("get", "/readyz"): (503,),
    ("get", "/livez"): (),
    ("get", "/healthz"): (),
}
OPEN_OBJECT = {"type": "object", "additionalProperties": True}
HEALTH = {
    "type": "object",
    "description": "Each part `ok` or `unavailable`; an admin key adds why, the model "
    "versions and the learner's state.",
    "required": ["status", "parts"],
    "properties": {
        "status": {"type": "string"},
        "parts": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``'s JSON Schema, which goes with its definitions into
    ``components``."""
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


def _starlette_paths(components: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The routes of our Starlette app (``serving.service.reads``), which BentoML leaves out."""
    from serving.actions import ProfileView
    from serving.journey_agent import JourneyAction

    customer = {"type": "string", "minLength": 1, "maxLength": 256}
    ok = "Successful Response"
    return {
        "/profile/{customer_id}": {
            "get": {
                "description": "The agent's view of one customer: profile, live basket, churn "
                "risk, recommended offers with reasons (logged as shown), their journeys.",
                "parameters": [
                    _param("customer_id", "path", customer),
                    _param("channel", "query", {"enum": list(CHANNELS), "default": "call_centre"}),
                ],
                "responses": {
                    "200": {"description": ok, **_json(_schema(ProfileView, components))}
                },
            }
        },
        "/journeys/{action}": {
            "post": {
                "description": "An agent or clerk ends, pauses or resumes a customer's journey.",
                "parameters": [_param("action", "path", {"enum": ["end", "pause", "resume"]})],
                "requestBody": {"required": True, **_json(_schema(JourneyAction, components))},
                "responses": {"200": {"description": ok, **_json(OPEN_OBJECT)}},
            }
        },
        "/outbox": {
            "get": {
                "description": "Messages queued by journeys for one channel's sender, claimed "
                "(marked sent) unless peek=true.",
                "parameters": [
                    _param("channel", "query", {"enum": list(OUTBOUND_CHANNELS)}, required=True),
                    _param("peek", "query", {"type": "boolean", "default": False}),
                ],
                "responses": {
                    "200": {
                        "description": ok,
                        **_json(
                            {
                                "type": "object",
                                "required": ["messages"],
                                "properties": {"messages": {"type": "array", "items": OPEN_OBJECT}},
                            }
                        ),
                    }
                },
            }
        },
        "/reports": {
            "get": {
                "description": "The marketers' report as HTML, or its numbers with format=json.",
                "parameters": [
                    _param("format", "query", {"enum": ["html", "json"], "default": "html"})
                ],
                "responses": {
                    "200": {
                        "description": ok,
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "application/json": {"schema": OPEN_OBJECT},
                        },
                    }
                },
            }
        },
        "/reports/refresh": {
            "post": {
                "description": "Starts a report build in a process of its own (admin); "
                "GET /reports serves it once built.",
                "responses": {"202": {"description": "Accepted", **_json(OPEN_OBJECT)}},
            }
        },
        "/promote/{model}": {
            "post": {
                "description": "The promotion gate of `nextbest promote` (admin); a winning "
                "challenger is loaded at once.",
                "parameters": [
                    _param("model", "path", {"type": "string", "minLength": 1, "maxLength": 64})
                ],
                "responses": {"200": {"description": ok, **_json(OPEN_OBJECT)}},
            }
        },
    }


def _inline_to_ref(media: dict[str, Any], components: dict[str, Any]) -> None:
    """BentoML's inline schema of an API's body drops the ``null`` of optional fields; its
    component of the same title keeps it: point at that."""
    schema = media.get("schema", {})
    schema.pop("root_input", None)  # BentoML's marker, not JSON Schema
    title = schema.get("title")
    if title in components:
        components[title].pop("root_input", None)  # BentoML's marker, not JSON Schema
        media["schema"] = {"$ref": REF.format(model=title)}


def _responses(path: str, method: str, operation: dict[str, Any]) -> None:
    """The operation's responses: its 200 as built, then every refusal it can give."""
    kept = {k: v for k, v in operation.get("responses", {}).items() if str(k).startswith("2")}
    statuses = list(STATUSES.get((method, path), ()))
    if "{" in path:  # a parameter that makes no route (a "/" in it): no such path
        statuses.append(404)
    if path not in PUBLIC_PATHS:
        statuses.append(401)
        if path.startswith(ADMIN_PATHS):
            statuses.append(403)
    error = {"$ref": REF.format(model="Error")}
    for status in sorted(set(statuses)):
        kept[str(status)] = {"description": REASONS[status], **_json(error)}
    operation["responses"] = kept


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document (``Service.openapi_spec.asdict()``) with every route, the API key
    scheme, every refusal with its body, and the right nullability."""
    doc = copy.deepcopy(spec)
    doc["openapi"] = "3.1.0"
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    # BentoML's error bodies (detail a string) and task status (we have no task APIs)
    for name in ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse"):
        components.pop(name, None)
    components["Error"] = ERROR
    doc["paths"].update(_starlette_paths(components))
    doc["paths"]["/healthz"]["get"]["responses"]["200"].update(_json(HEALTH))
    # /events takes a dict (parse_event names the first bad field); its schema is the Event's
    from features.events import Event

    events = doc["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    events["schema"] = _schema(Event, components)
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for media in operation.get("requestBody", {}).get("content", {}).values():
                _inline_to_ref(media, components)
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    _inline_to_ref(media, components)
            _responses(path, method, operation)
            if path in PUBLIC_PATHS:
                operation["security"] = []  # the probes answer anyone
    doc["components"]["securitySchemes"] = {
        SCHEME: {"type": "apiKey", "in": "header", "name": KEY_HEADER}
    }
    doc["security"] = [{SCHEME: []}]
    return doc


def routes(spec_of: Callable[[], dict[str, Any]]) -> list[Route]:
    """``GET /docs.json`` (shadowing BentoML's own) and ``GET /docs``: the document, built once
    per worker from BentoML's (``spec_of``)."""
    built: list[dict[str, Any]] = []

    async def _docs(request: Request) -> JSONResponse:
        if not built:
            built.append(document(spec_of()))
        return JSONResponse(built[0])

    return [Route("/docs.json", _docs, methods=["GET"]), Route("/docs", _docs, methods=["GET"])]

"""The right to erasure, resumable: one request erases a person from every store, and a
request cut short (a store down, a crash) is finished by a retry or the service's next round.

A request is recorded (the ``erasures`` table, in the ledger's database) before anything is
deleted, with every customer id the person has had (the id asked for, the id it resolves to
and the ids merged into it, read while the identity graph still knows the merges) and the
salted hashes of their identifiers (to find their rows in the source extracts). Each store
is then erased and marked done; a retry of the same request, ``resume_pending`` (the
service's background round, ``nextbest erase --resume``) runs what is not done. Once every
store is done the ids and hashes leave the record too: what stays is the request id, a
salted hash of the id asked for, the done flags and the times, the proof that it ran.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)

from nextbest.db import checkpoint, create_tables
from record.tables import now
from serving import notes
from serving.deps import Deps

log = logging.getLogger("nextbest.serving")

STORES = ("ledger", "identities", "features", "sources", "models")  # erased in this order

metadata = MetaData()
erasures = Table(
    "erasures",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("subject_hash", String(32), nullable=False, index=True),  # salted: no id in clear
    Column("customer_ids", JSON, nullable=False),  # every id to erase; emptied once done
    Column("key_hashes", JSON, nullable=False),  # the person's salted identifier keys; same
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False, index=True),  # pending|done
    *(Column(f"{s}_done", Boolean, nullable=False, default=False) for s in STORES),
    Column("last_error", String(300), nullable=False, default=""),
)


def subject_hash(deps: Deps, customer_id: str) -> str:
    """How the record names the person asked about: salted with the identity salt."""
    from features.identity import salted_hash

    return salted_hash(deps.settings.identity_salt.encode(), "erasure", customer_id)


@dataclass(frozen=True)
class Person:
    """What the record keeps of the person until every store is done."""

    customer_ids: list[str]  # every id they have had
    key_hashes: list[str]  # their identifiers' salted keys, to find them in source extracts


def erasable_ids(customer_id: str, deps: Deps) -> list[str]:
    """The id asked for, the id it now resolves to, and every id merged into that one: rows
    written before a merge still carry the old id. Read before the graph forgets the merges."""
    if deps.graph is None:
        return [customer_id]
    from features import graph_store as gs

    with deps.graph.engine.connect() as conn:
        current = gs.current_id(conn, customer_id) or customer_id
        merged = conn.execute(select(gs.merges.c.from_id).where(gs.merges.c.into_id == current))
        return list(dict.fromkeys([customer_id, current, *merged.scalars()]))


def erase(customer_id: str, deps: Deps) -> dict[str, Any]:
    """Erase a person everywhere, or finish the pending request for them; the result says
    per store what was erased, or why it failed (status ``partial``, the stores ``left``; the
    request then stays pending)."""
    create_tables(deps.ledger.engine, metadata)
    subject = subject_hash(deps, customer_id)
    ids = erasable_ids(customer_id, deps)  # before anything of this request is deleted
    keys = deps.graph.stored_key_hashes(ids) if deps.graph is not None else []
    with deps.ledger.engine.begin() as conn:
        pending = erasures.c.subject_hash == subject, erasures.c.status == "pending"
        row = conn.execute(select(erasures).where(*pending)).mappings().first()
        if row is None:
            request_id = str(uuid.uuid4())
            conn.execute(
                insert(erasures).values(
                    request_id=request_id,
                    subject_hash=subject,
                    customer_ids=ids,
                    key_hashes=keys,
                    requested_at=now(),
                    status="pending",
                )
            )
        else:  # a retry: the ids and keys recorded first, and any merged in since
            request_id = row["request_id"]
            ids = list(dict.fromkeys([*row["customer_ids"], *ids]))
            keys = sorted({*row["key_hashes"], *keys})
            conn.execute(_set(request_id, customer_ids=ids, key_hashes=keys))
    result = _run(request_id, deps)
    return {"customer_id": customer_id, **result}


def resume_pending(deps: Deps) -> list[dict[str, Any]]:
    """Finish every pending request (the service runs this in the background, and the CLI's
    ``erase --resume``); then, if any request finished since this worker last looked, drop
    this worker's in-memory copies of identifiers (``forget_in_memory``)."""
    create_tables(deps.ledger.engine, metadata)
    with deps.ledger.engine.connect() as conn:  # closed before erasing: an open read would
        pending = conn.execute(  # keep the WAL from being truncated after the erasure
            select(erasures.c.request_id).where(erasures.c.status == "pending")
        ).scalars()
        request_ids = list(pending)
    results = [_run(request_id, deps) for request_id in request_ids]
    with deps.ledger.engine.connect() as conn:
        finished = conn.execute(select(func.count()).where(erasures.c.status == "done"))
        done = finished.scalar_one()
    if done != deps.erasures_seen:  # another worker's erasure: forget here too
        deps.erasures_seen = done
        forget_in_memory(deps, [])
    return results


def _run(request_id: str, deps: Deps) -> dict[str, Any]:
    """Erase each store not done yet and mark it done; the request is done when all are."""
    with deps.ledger.engine.connect() as conn:
        row = conn.execute(select(erasures).where(erasures.c.request_id == request_id))
        record = row.mappings().one()
    person = Person(list(record["customer_ids"]), list(record["key_hashes"]))
    ids = person.customer_ids
    result: dict[str, Any] = {"request_id": request_id, "customer_ids": ids}
    errors, left = [], []
    for store in STORES:
        if record[f"{store}_done"]:
            result[store] = "done earlier"
            continue
        try:
            result[store] = STEPS[store](person, deps)
        except Exception as exc:  # noqa: BLE001 - reported; the other stores are still erased
            result[store] = f"failed: {type(exc).__name__}: {exc}"[:300]
            errors.append(f"{store}: {result[store]}")
            left.append(store)
            continue
        with deps.ledger.engine.begin() as conn:
            conn.execute(_set(request_id, **{f"{store}_done": True}))
    forget_in_memory(deps, ids)
    if errors:
        with deps.ledger.engine.begin() as conn:
            conn.execute(_set(request_id, last_error="; ".join(errors)[:300]))
        log.warning("erasure %s pending: %s", request_id, "; ".join(errors))
        # the 503's body (serving.service): what is left, and the first failure as the error;
        # the request stays pending, so the same request again (or the resume round) ends it
        result.update(status="partial", left=left, error=errors[0][:300], field=left[0])
        return result
    with deps.ledger.engine.begin() as conn:  # needed until now, not any more
        done = {"status": "done", "finished_at": now(), "last_error": ""}
        conn.execute(_set(request_id, customer_ids=[], key_hashes=[], **done))
    checkpoint(deps.ledger.engine)  # the pages that held the record's ids leave the WAL
    result["status"] = "done"
    return result


def _set(request_id: str, **values: Any) -> Any:
    return update(erasures).where(erasures.c.request_id == request_id).values(**values)


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return {k: sum(c[k] for c in counts) for k in counts[0]} if counts else {}


def _graph(deps: Deps) -> Any:
    if deps.graph is None:
        raise RuntimeError(f"identity graph unavailable: {deps.missing.get('graph', '?')}")
    return deps.graph


def _ledger(person: Person, deps: Deps) -> dict[str, int]:
    journeys = _journeys(person.customer_ids, deps)  # the step log names no customer: first
    erased = _summed([deps.ledger.erase(c) for c in person.customer_ids])
    erased = {k: v + journeys.get(k, 0) for k, v in erased.items()} | {
        k: v for k, v in journeys.items() if k not in erased
    }
    # holdout draws are keyed by ids and identifier hashes, not by a customer_id column
    keys = [*person.customer_ids, *person.key_hashes]
    audiences = _audiences(person.customer_ids, deps)
    # the console's notes and answers on the person
    erased["console_notes"] = notes.erase(deps.ledger.engine, person.customer_ids)
    return {**erased, **audiences, "assignments": deps.ledger.erase_assignments(keys)}


def _audiences(customer_ids: list[str], deps: Deps) -> dict[str, int]:
    """A person's target-group memberships and lift units (issue 18). What an ad platform
    holds (``audience_exported``: key hashes) stays until the next export sends its removal,
    which then deletes it: erased here, the platform would keep them."""
    from serving.audiences import audience_members
    from serving.paid_media_export import audience_units

    counts = {}
    with deps.ledger.engine.begin() as conn:
        for table in (audience_members, audience_units):
            if not inspect(conn).has_table(table.name):  # never created: nothing to erase
                continue
            q = delete(table).where(table.c.customer_id.in_(customer_ids))
            counts[table.name] = conn.execute(q).rowcount
    return counts


def _journeys(customer_ids: list[str], deps: Deps) -> dict[str, int]:
    """A person's journey rows: instances, their step logs and waits, pending intent entries
    and counted intent events (the step log is keyed by instance, so it goes first)."""
    from journeys.intent_state import journey_intent_events, journey_pending_entries
    from journeys.state import journey_instances, journey_steps, journey_waits

    counts = {}
    with deps.ledger.engine.begin() as conn:
        theirs = select(journey_instances.c.instance_id).where(
            journey_instances.c.customer_id.in_(customer_ids)
        )
        q = delete(journey_steps).where(journey_steps.c.instance_id.in_(theirs))
        counts["journey_steps"] = conn.execute(q).rowcount
        for table in (journey_waits, journey_instances, journey_pending_entries,
                      journey_intent_events):  # fmt: skip
            q = delete(table).where(table.c.customer_id.in_(customer_ids))
            counts[table.name] = conn.execute(q).rowcount
    return counts


def _identities(person: Person, deps: Deps) -> int:
    return sum(_graph(deps).erase(c) for c in person.customer_ids)


def _features(person: Person, deps: Deps) -> dict[str, int]:
    from features.erase import erase_customer

    store = getattr(deps.features, "store", None)  # None: erase_customer opens the store
    return _summed([erase_customer(store, c, deps.settings) for c in person.customer_ids])


def _sources(person: Person, deps: Deps) -> int:
    from features.erase import erase_source_rows

    graph = _graph(deps)  # hashes the extracts' identifiers as the graph stored the person's
    return erase_source_rows(deps.settings, graph, person.key_hashes, person.customer_ids)


def _models(person: Person, deps: Deps) -> int:
    """Rows of the person in model artifacts: validation windows, and the CLV fit summaries."""
    from training.clv_registry import erase_fit_rows
    from training.registry import erase_validation_rows

    ids = person.customer_ids
    return erase_validation_rows(deps.settings, ids) + erase_fit_rows(deps.settings, ids)


STEPS: dict[str, Callable[[Person, Deps], Any]] = {
    "ledger": _ledger,
    "identities": _identities,
    "features": _features,
    "sources": _sources,
    "models": _models,
}


def forget_in_memory(deps: Deps, ids: list[str]) -> None:
    """Drop this process's copies: the normalisers' memos (raw and canonical e-mails,
    phones, names) and the feature reader's remembered entity keys of ``ids``."""
    from features import normalize

    normalize.forget_cached()
    store = getattr(deps.features, "store", None)
    if store is not None:
        from features.online_read import forget_customer

        for c in ids:
            forget_customer(store, c)

"""Contact caps that hold under concurrency: decisions planned but not committed yet, and the
commit's check that a plan is still current.

Caps and suppression read a customer's shows from the ledger, but the service commits
decisions in groups and runs several workers. Two guards close the gaps. A worker counts the
decisions it has planned and not yet committed (``Pending``). A decision's commit, holding the
customer's write lock (SQLite's single writer, PostgreSQL's advisory lock), counts the
customer's shows and refuses a plan that did not count one of them (``stale_rows``): the
caller plans it again on the current history, with a fresh draw. Whether a plan is refused
depends on other writers only, never on what it drew, so the logged probability stays that of
what is shown; the plan is never altered after it is drawn. The check costs one grouped,
indexed count query per group (``counted``) inside the group's transaction.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text

MAX_PLANS = 50  # a decision planned again this often: its customer's history never settles
# Takes the customers' advisory locks in one order (no deadlock between two groups).
PG_LOCK = text(
    "SELECT pg_advisory_xact_lock(k)"
    " FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY 1) AS s"
)


class PlannedOn(NamedTuple):
    """The contact history a plan read: its window start, how many committed shows it counted,
    and the pending decisions (ids) it counted besides."""

    since: datetime
    committed: int
    pending: tuple[str, ...] = ()


class Pending:
    """This process's decisions planned and not yet committed, by customer (thread-safe: the
    event loop plans, a thread commits, the profile view plans in threads), and the recent
    ones that were never written (their commit failed or found them stale)."""

    KEEP_FAILED = 10_000  # ids of unwritten rows remembered, for plans that counted them

    def __init__(self) -> None:
        self._rows: dict[str, list[Any]] = {}
        self._failed: dict[str, None] = {}  # an ordered set, oldest first
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._rows)

    def hold(self, row: Any) -> None:
        if row.customer_id is not None and row.offer_id is not None:
            with self._lock:
                self._rows.setdefault(row.customer_id, []).append(row)

    def release(self, rows: Sequence[Any], failed: Sequence[Any] = ()) -> None:
        """``rows``' commit is over; those in ``failed`` were not written."""
        with self._lock:
            for row in rows:
                held = self._rows.get(row.customer_id or "")
                if held is not None and any(row is r for r in held):
                    held[:] = [r for r in held if r is not row]
                    if not held:
                        del self._rows[row.customer_id]
            for row in failed:
                self._failed[row.decision_id] = None
            while len(self._failed) > self.KEEP_FAILED:
                del self._failed[next(iter(self._failed))]

    def failed(self, decision_id: str) -> bool:
        return decision_id in self._failed

    def of(self, customer_id: str) -> list[Any]:
        with self._lock:
            return list(self._rows.get(customer_id, ()))


def customer_lock(customer_id: str) -> int:
    """A customer's PostgreSQL advisory-lock key (64 bits of a hash of the id)."""
    digest = hashlib.blake2b(f"nextbest:customer:{customer_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


CountMany = Callable[[list[str], datetime], dict[str, int]]
COUNT_CHUNK = 500  # customers per grouped count query (an IN list of bound ids)


def counted(rows: Sequence[Any], count_many: CountMany) -> Callable[[str, datetime], int]:
    """The ``count`` of :func:`stale_rows` for ``rows``, read with one grouped query per
    window start and ``COUNT_CHUNK`` customers (``count_many(cids, since)``: each customer's
    shows since then; a customer without any may be left out) instead of one per row. Read
    before any row of the group is written, as each count was: ``stale_rows`` adds those."""
    wanted: dict[datetime, dict[str, None]] = {}
    for row in rows:
        if row.customer_id is not None and row.planned_on is not None:
            wanted.setdefault(row.planned_on.since, {})[row.customer_id] = None
    seen: dict[tuple[str, datetime], int] = {}
    for since, cids in wanted.items():
        ids = list(cids)
        for at in range(0, len(ids), COUNT_CHUNK):
            for cid, n in count_many(ids[at : at + COUNT_CHUNK], since).items():
                seen[(cid, since)] = n
    return lambda cid, since: seen.get((cid, since), 0)


def stale_rows(
    rows: list[Any], count: Callable[[str, datetime], int], failed: Callable[[str], bool]
) -> list[Any]:
    """The planned rows whose customer's shows now, committed (``count(customer, since)``) and
    written earlier in this group, differ from those their plan counted that were written:
    another writer showed the customer something the plan did not count. A counted pending
    row that was never written (``failed``) only made the plan stricter; the plan stands."""
    earlier: Counter[str] = Counter()
    stale: list[Any] = []
    dropped: set[str] = set()
    for row in rows:
        cid, mark = row.customer_id, row.planned_on
        if cid is not None and mark is not None:
            written = sum(1 for d in mark.pending if d not in dropped and not failed(d))
            if count(cid, mark.since) + earlier[cid] != mark.committed + written:
                stale.append(row)
                dropped.add(row.decision_id)
                continue
        if cid is not None and row.offer_id is not None:
            earlier[cid] += 1
    return stale

"""Reading a batch's per-learner results (`GET /v1/batches/{id}/items`): a
page as JSON, or the whole result as CSV (issue #13 section 2).

Both walk the items by keyset on the learner id, with the same filters. The
CSV reads a page at a time, each in its own short session, so a million
items stream with flat memory and no transaction held while the client
reads. It names the learner by the school's identifiers too: `external_id`,
and `email` until the learner is purged (a purge empties it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlalchemy import Row, Select, and_, select
from sqlalchemy.orm import Session

from producer.audit import csv_text
from shared.models import BatchItem, Learner

CSV_PAGE = 2000
CSV_COLUMNS = (
    "learner_id",
    "external_id",
    "email",
    "outcome",
    "reason",
    "error",
    "finished_at",
)
Query = TypeVar("Query", bound=Select)
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@")


@dataclass(frozen=True)
class ItemsQuery:
    """The filters of `GET /v1/batches/{id}/items`; `cursor` is the
    `next_cursor` of the previous page (items after that learner id)."""

    school_id: int
    batch_id: int
    outcome: str | None = None
    reason: str | None = None
    cursor: int | None = None


def _filtered(statement: Query, query: ItemsQuery) -> Query:
    statement = statement.where(BatchItem.batch_id == query.batch_id)
    if query.outcome:
        statement = statement.where(BatchItem.outcome == query.outcome)
    if query.reason:
        statement = statement.where(BatchItem.reason == query.reason)
    if query.cursor:
        statement = statement.where(BatchItem.learner_id > query.cursor)
    return statement.order_by(BatchItem.learner_id)


def items_page(session: Session, query: ItemsQuery, limit: int) -> list[BatchItem]:
    """Up to `limit` items matching `query`, by learner id."""
    return list(session.scalars(_filtered(select(BatchItem), query).limit(limit)))


def result_rows(session: Session, query: ItemsQuery, limit: int) -> list[Row]:
    """Up to `limit` items matching `query` in the CSV's columns. The page of
    items is taken first and only its learners are looked up (by primary
    key): joined before the LIMIT, PostgreSQL may hash the whole school's
    learners for every page. The learner is joined within the school only:
    an unknown id (`not_found`) that is another school's learner names no
    one."""
    item = BatchItem.__table__.c
    page = _filtered(
        select(item.learner_id, item.outcome, item.reason, item.error, item.finished_at), query
    )
    items = page.limit(limit).subquery()
    learner = and_(Learner.id == items.c.learner_id, Learner.school_id == query.school_id)
    statement = (
        select(
            items.c.learner_id,
            Learner.external_id,
            Learner.email,
            items.c.outcome,
            items.c.reason,
            items.c.error,
            items.c.finished_at,
        )
        .select_from(items.outerjoin(Learner, learner))
        .order_by(items.c.learner_id)
    )
    return list(session.execute(statement))


def csv_lines(
    sessions: Callable[[], AbstractContextManager[Session]], query: ItemsQuery
) -> Iterator[str]:
    """Every item matching `query` (from its cursor on) as CSV, a header line
    first."""

    def pages() -> Iterator[list[Sequence[object]]]:
        cursor = query.cursor
        while True:
            with sessions() as session:
                rows = result_rows(session, replace(query, cursor=cursor), CSV_PAGE)
            yield [(r[0], cell(r[1]), cell(r[2]), *r[3:]) for r in rows]
            if len(rows) < CSV_PAGE:
                return
            cursor = rows[-1].learner_id

    return csv_text(CSV_COLUMNS, pages())


def cell(text: str | None) -> str | None:
    """A value that came from people (an external id, an email) as a cell a
    spreadsheet shows as text: one starting like a formula gets a leading `'`
    (CSV formula injection; OWASP)."""
    if text and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text

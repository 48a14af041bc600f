"""Reading the audit trail (`GET /v1/audit`): one school's entries, newest
first, by keyset on the id, with the filters an auditor asks by. The
indexes that serve each filter are in `shared/models.py` `AuditEntry`.

Learners appear by id only: the trail names no email and no name, so it
survives a learner's erasure as it is."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from shared.models import AuditEntry

CSV_PAGE = 1000
COLUMNS = (
    "id",
    "created_at",
    "actor_id",
    "learner_id",
    "batch_id",
    "token_id",
    "action",
    "outcome",
    "reason",
)


@dataclass(frozen=True)
class AuditQuery:
    """The filters of `GET /v1/audit`, all optional; `cursor` is the
    `next_cursor` of the previous page (entries older than it)."""

    school_id: int
    learner_id: int | None = None
    batch_id: int | None = None
    actor_id: int | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: int | None = None


def audit_page(session: Session, query: AuditQuery, limit: int) -> list[Row]:
    """Up to `limit` entries matching `query`, newest first."""
    statement = select(*(getattr(AuditEntry, name) for name in COLUMNS)).where(
        AuditEntry.school_id == query.school_id
    )
    if query.learner_id is not None:
        statement = statement.where(AuditEntry.learner_id == query.learner_id)
    if query.batch_id is not None:
        statement = statement.where(AuditEntry.batch_id == query.batch_id)
    if query.actor_id is not None:
        statement = statement.where(AuditEntry.actor_id == query.actor_id)
    if query.action is not None:
        statement = statement.where(AuditEntry.action == query.action)
    if query.since is not None:
        statement = statement.where(AuditEntry.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEntry.created_at < query.until)
    if query.cursor is not None:
        statement = statement.where(AuditEntry.id < query.cursor)
    return list(session.execute(statement.order_by(AuditEntry.id.desc()).limit(limit)).all())


def next_cursor(rows: list[Row], limit: int) -> int | None:
    return rows[-1].id if len(rows) == limit else None


def csv_lines(
    sessions: Callable[[], AbstractContextManager[Session]], query: AuditQuery
) -> Iterator[str]:
    """Every entry matching `query` (from its cursor on) as CSV, a header line
    first. Read a page at a time, each page in its own short session, so a
    long export holds no transaction and no connection while the client
    reads."""

    def pages() -> Iterator[list[Row]]:
        cursor = query.cursor
        while True:
            with sessions() as session:
                rows = audit_page(session, replace(query, cursor=cursor), CSV_PAGE)
            yield rows
            cursor = next_cursor(rows, CSV_PAGE)
            if cursor is None:
                return

    return csv_text(COLUMNS, pages())


def csv_text(header: Sequence[str], pages: Iterable[Iterable[Sequence[object]]]) -> Iterator[str]:
    """A header line, then each page of rows as one piece of CSV text (None
    an empty cell, a moment in ISO 8601): what every `text/csv` answer of the
    API streams, one page in memory at a time."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def flush() -> str:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for rows in pages:
        for row in rows:
            writer.writerow(["" if value is None else _text(value) for value in row])
        text = flush()
        if text:
            yield text


def _text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)

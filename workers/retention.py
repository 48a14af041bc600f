"""Retention (#14 section 7): what is old enough goes, a chunk at a time.

- A finished batch (`FINISHED_BATCH_STATUSES`) whose `finished_at` is more
  than `BATCH_RETENTION_DAYS` ago goes with its items. Items go first, up to
  `CHUNK_ROWS` per transaction; then the batch's invitations are unlinked
  (`batch_id` NULL, what the foreign key's ON DELETE SET NULL would do, but in
  chunks: a resend batch has one per learner); then the batch row, whose
  delete now cascades to nothing and unlinks its retries (`retry_of`).
- An audit row written more than `AUDIT_RETENTION_DAYS` ago goes, whatever
  it names. `audit_log.batch_id` is no foreign key, so the rows of a removed
  batch stay (and `GET /v1/audit?batch_id=` still finds them) until then;
  the settings refuse an audit retention shorter than the batches'.

Every chunk is one short transaction deleting rows by their keys (no table
lock, no rewrite: the space is reused after VACUUM, not given back), and a
pass does at most `CHUNKS_PER_PASS` of each kind and starts none after
`SECONDS_PER_PASS`, so a backlog of millions never starves the reconciler's
other duties. A batch being removed is locked `FOR NO KEY UPDATE SKIP
LOCKED` for the chunk, so several reconcilers share the work. Running
batches are never selected. 0 days turns a kind off.

The audit sweep walks `audit_log` in id order (its primary key) rather than
by `created_at`, which has no index: adding one would cost an index entry per
learner in the workers' hot statement. Ids grow with time (a row's
`created_at` is its transaction's start, at most seconds out of order), so
the oldest rows are at the head; a chunk deletes the expired rows among the
first `CHUNK_ROWS` and the sweep stops at the first chunk with none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import now
from shared.models import FINISHED_BATCH_STATUSES, AuditEntry, Batch, BatchItem, Invitation
from shared.settings import Settings

# Rows per transaction: 0.03-0.13 s a chunk on the shared 2-core machine, up
# to 1.1 s while a batch ran beside it (docs/PERFORMANCE.md).
CHUNK_ROWS = 5000
# Per reconciler pass, for batches and for the audit trail each: at most this
# many chunks, and no new chunk once this many seconds went (a loaded machine).
CHUNKS_PER_PASS = 20
SECONDS_PER_PASS = 2.0


@cache
def rows_removed() -> Counter:
    return Counter(
        "batch_retention_rows_removed",
        "Rows removed by retention, by table (batch_items, batches, audit_log).",
        ["table"],
    )


@dataclass
class Removed:
    items: int = 0
    batches: int = 0
    audit: int = 0
    # The longest single chunk transaction of the pass.
    longest_chunk_seconds: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.items or self.batches or self.audit)


def remove_expired(sessions: sessionmaker[Session], settings: Settings) -> Removed:
    """One reconciler pass's share of retention: chunks of expired batches,
    then chunks of expired audit rows, each within the pass's bounds."""
    removed = Removed()
    if settings.batch_retention_days:
        cutoff = now() - timedelta(days=settings.batch_retention_days)
        _chunks(removed, lambda: remove_batch_chunk(sessions, cutoff, removed))
    if settings.audit_retention_days:
        cutoff = now() - timedelta(days=settings.audit_retention_days)
        _chunks(removed, lambda: remove_audit_chunk(sessions, cutoff, removed))
    return removed


def _chunks(removed: Removed, chunk: Callable[[], bool]) -> None:
    """Run `chunk` until it finds nothing to do or the pass's bounds are reached."""
    began = time.perf_counter()
    for _ in range(CHUNKS_PER_PASS):
        started = time.perf_counter()
        did = chunk()
        ended = time.perf_counter()
        removed.longest_chunk_seconds = max(
            removed.longest_chunk_seconds, round(ended - started, 4)
        )
        if not did or ended - began >= SECONDS_PER_PASS:
            return


def remove_batch_chunk(sessions: sessionmaker[Session], cutoff: datetime, removed: Removed) -> bool:
    """One transaction on one expired batch: up to `CHUNK_ROWS` of its items,
    or (none left) as many of its invitations unlinked, or (none left) the
    batch row. False when no batch is expired."""
    gone = 0
    with sessions() as session, session.begin():
        batch_id = _lock_expired_batch(session, cutoff)
        if batch_id is None:
            return False
        items = _delete_items(session, batch_id, CHUNK_ROWS)
        if not items and not _unlink_invitations(session, batch_id, CHUNK_ROWS):
            session.execute(delete(Batch).where(Batch.id == batch_id))
            gone = 1
    # Counted once committed.
    removed.items += items
    removed.batches += gone
    if items:
        rows_removed().labels(table="batch_items").inc(items)
    if gone:
        rows_removed().labels(table="batches").inc()
    return True


def _lock_expired_batch(session: Session, cutoff: datetime) -> int | None:
    query = (
        select(Batch.id)
        .where(Batch.status.in_(FINISHED_BATCH_STATUSES), Batch.finished_at < cutoff)
        .order_by(Batch.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        # NO KEY: a retry being created (FOR KEY SHARE on its original) does not wait.
        query = query.with_for_update(key_share=True, skip_locked=True)
    return session.scalar(query)


def _delete_items(session: Session, batch_id: int, rows: int) -> int:
    chunk = (
        select(BatchItem.learner_id)
        .where(BatchItem.batch_id == batch_id)
        .order_by(BatchItem.learner_id)
        .limit(rows)
    )
    return _count(
        session,
        delete(BatchItem).where(
            BatchItem.batch_id == batch_id, BatchItem.learner_id.in_(chunk.scalar_subquery())
        ),
    )


def _unlink_invitations(session: Session, batch_id: int, rows: int) -> int:
    chunk = select(Invitation.id).where(Invitation.batch_id == batch_id).limit(rows)
    return _count(
        session,
        update(Invitation).where(Invitation.id.in_(chunk.scalar_subquery())).values(batch_id=None),
    )


def remove_audit_chunk(sessions: sessionmaker[Session], cutoff: datetime, removed: Removed) -> bool:
    """The expired rows among the first `CHUNK_ROWS` of `audit_log` by id, in
    one transaction. False when none of them is expired."""
    head = select(AuditEntry.id, AuditEntry.created_at).order_by(AuditEntry.id).limit(CHUNK_ROWS)
    head_rows = head.subquery()
    expired = select(head_rows.c.id).where(head_rows.c.created_at < cutoff)
    with sessions() as session, session.begin():
        count = _count(session, delete(AuditEntry).where(AuditEntry.id.in_(expired)))
    if count:
        removed.audit += count
        rows_removed().labels(table="audit_log").inc(count)
    return bool(count)


def _count(session: Session, statement) -> int:
    return session.connection().execute(statement).rowcount

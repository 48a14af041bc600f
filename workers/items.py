"""The per-learner hot path: claim the item, apply the action, record the
outcome and the audit row, in one short transaction; then count progress.

On PostgreSQL that transaction is one statement (`workers.statements`): one
round trip per learner. The generic path below (`shared.actions.apply_action`
between a claim and a record) runs on SQLite, the embedded mode. Both are
derived from the action's rule in `shared.rules`. Progress is counted in
memory and sent to Redis in one pipeline per process every 100 ms
(`shared.progress.ProgressBuffer`).

A redelivered message finds its item no longer pending and does nothing. A
batch that is not running (cancelling, cancelled) starts no new learner.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from sqlalchemy import and_, exists, insert, update
from sqlalchemy.orm import Session, sessionmaker

from shared.actions import Actor, apply_action, new_token_hash
from shared.batches import BatchContext, complete_if_finished, load_context
from shared.contract import Action
from shared.db import get_engine, get_sessionmaker, now
from shared.models import AuditEntry, Batch, BatchItem, BatchStatus, ItemOutcome
from shared.outcomes import Outcome
from shared.progress import NoProgress, ProgressBuffer, get_progress
from shared.settings import get_settings
from workers import statements

log = logging.getLogger(__name__)


@lru_cache(maxsize=1024)
def _context(batch_id: int) -> BatchContext | None:
    # A batch's action, school, actor and params never change after submit.
    with sessions()() as session:
        return load_context(session, batch_id)


def sessions() -> sessionmaker[Session]:
    return get_sessionmaker()


@lru_cache(maxsize=1024)
def _one_statement(batch_id: int) -> statements.Prepared | None:
    """The batch's single-statement path, or None where the generic path runs."""
    ctx = _context(batch_id)
    if ctx is None or get_engine().dialect.name != "postgresql":
        return None
    return statements.prepare(ctx, get_settings().deletion_grace_seconds)


@lru_cache(maxsize=4)
def _connections(database_url: str) -> statements.Connections:
    return statements.Connections(database_url)


def claim_item(session: Session, batch_id: int, learner_id: int) -> bool:
    """Lock the item if it is still pending and its batch is running."""
    running = exists().where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING)
    return bool(
        session.connection()
        .execute(
            update(BatchItem)
            .where(
                and_(
                    BatchItem.batch_id == batch_id,
                    BatchItem.learner_id == learner_id,
                    BatchItem.outcome == ItemOutcome.PENDING,
                    running,
                )
            )
            .values(attempts=BatchItem.attempts + 1)
        )
        .rowcount
    )


def record_outcome(
    session: Session, ctx: BatchContext, learner_id: int, outcome: Outcome, pending_only=False
) -> bool:
    """Write the item's outcome and the audit row. With `pending_only`, only a
    still-pending item is written (recording a failure outside the claim)."""
    conditions = [BatchItem.batch_id == ctx.batch_id, BatchItem.learner_id == learner_id]
    if pending_only:
        conditions.append(BatchItem.outcome == ItemOutcome.PENDING)
    written = (
        session.connection()
        .execute(
            update(BatchItem)
            .where(*conditions)
            .values(
                outcome=outcome.kind,
                reason=outcome.reason,
                error=outcome.error,
                finished_at=now(),
            )
        )
        .rowcount
    )
    if written:
        session.connection().execute(
            insert(AuditEntry).values(
                school_id=ctx.school_id,
                actor_id=ctx.actor_id,
                learner_id=learner_id,
                batch_id=ctx.batch_id,
                action=ctx.action,
                outcome=outcome.kind,
                reason=outcome.reason,
            )
        )
    return bool(written)


def process_item(batch_id: int, learner_id: int) -> Outcome | None:
    """Apply the batch's action to one learner. None when there was nothing to
    do: the item is finished already, or the batch is not running."""
    ctx = _context(batch_id)
    if ctx is None:
        return None
    prepared = _one_statement(batch_id)
    if prepared is not None:
        token = new_token_hash() if ctx.action == Action.RESEND_INVITATION else None
        connections = _connections(get_settings().database_url)
        outcome = statements.run(connections, prepared, learner_id, token)
        if outcome is None:
            return None
    else:
        with sessions()() as session, session.begin():
            if not claim_item(session, batch_id, learner_id):
                return None
            outcome = apply_action(
                session,
                ctx.action,
                Actor(ctx.school_id, ctx.actor_id),
                learner_id,
                ctx.params,
                batch_id=ctx.batch_id,
                grace_seconds=get_settings().deletion_grace_seconds,
            )
            record_outcome(session, ctx, learner_id, outcome)
    count_progress(ctx, outcome)
    return outcome


def record_failure(batch_id: int, learner_id: int, error: str) -> Outcome | None:
    """Mark a still-pending item failed (permanent error, or retries exhausted)."""
    ctx = _context(batch_id)
    if ctx is None:
        return None
    outcome = Outcome.failed(error)
    with sessions()() as session, session.begin():
        if not record_outcome(session, ctx, learner_id, outcome, pending_only=True):
            return None
    count_progress(ctx, outcome)
    return outcome


_buffer: ProgressBuffer | None = None
_buffer_lock = threading.Lock()


def _progress_buffer() -> ProgressBuffer | None:
    global _buffer
    if _buffer is None:
        progress = get_progress()
        if isinstance(progress, NoProgress):
            return None
        with _buffer_lock:
            if _buffer is None:
                _buffer = ProgressBuffer(progress, _complete_when_counted)
    return _buffer


def _complete_when_counted(batch_id: int, done: int) -> None:
    ctx = _context(batch_id)
    if ctx is not None and done >= ctx.total:
        with sessions()() as session, session.begin():
            complete_if_finished(session, batch_id)


def count_progress(ctx: BatchContext, outcome: Outcome) -> None:
    """Count in Redis (buffered); the flush that brings the count to the total
    completes the batch. Without Redis, the dispatcher completes it from the
    database."""
    buffer = _progress_buffer()
    if buffer is not None:
        buffer.record(ctx.batch_id, outcome.label)

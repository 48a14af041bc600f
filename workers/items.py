"""The per-learner hot path: claim the item, apply the action, record the
outcome, in one short transaction; then count progress. (The audit row is
copied from the item later: `shared.audit.record_finished_items`.)

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
from functools import lru_cache

from sqlalchemy import and_, exists, update
from sqlalchemy.orm import Session

from shared.actions import Actor, apply_action, new_token_hash
from shared.batches import BatchContext, complete_if_finished, load_context
from shared.contract import Action
from shared.db import now
from shared.models import PENDING_ITEM, Batch, BatchItem, BatchStatus
from shared.outcomes import Outcome
from shared.progress import NoProgress, ProgressBuffer
from shared.runtime import Runtime
from workers import statements

log = logging.getLogger(__name__)


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
                    PENDING_ITEM,
                    running,
                )
            )
            .values(attempts=BatchItem.attempts + 1)
        )
        .rowcount
    )


def record_outcome(
    session: Session, batch_id: int, learner_id: int, outcome: Outcome, pending_only=False
) -> bool:
    """Write the item's outcome. With `pending_only`, only a still-pending
    item is written (recording a failure outside the claim)."""
    conditions = [BatchItem.batch_id == batch_id, BatchItem.learner_id == learner_id]
    if pending_only:
        conditions.append(PENDING_ITEM)
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
    return bool(written)


class Items:
    """The hot path's state in one worker process: each batch's context and
    prepared statement, cached (a batch's action, school, actor and params
    never change after submit); one database connection per thread; and the
    progress buffer. Built once per process by `workers.runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.sessions = runtime.sessions
        self.settings = runtime.settings
        self.on_postgresql = runtime.engine.dialect.name == "postgresql"
        self.connections = statements.connections_for(runtime.settings.database_url)
        self.context = lru_cache(maxsize=1024)(self._load_context)
        self.one_statement = lru_cache(maxsize=1024)(self._prepare)
        self.buffer = (
            None
            if isinstance(runtime.progress, NoProgress)
            else ProgressBuffer(runtime.progress, self._complete_when_counted)
        )

    def _load_context(self, batch_id: int) -> BatchContext | None:
        with self.sessions() as session:
            return load_context(session, batch_id)

    def _prepare(self, batch_id: int) -> statements.Prepared | None:
        """The batch's single statement, or None where the generic path runs."""
        ctx = self.context(batch_id)
        if ctx is None or not self.on_postgresql:
            return None
        return statements.prepare(
            ctx, self.settings.deletion_grace_seconds, self.settings.invite_cooldown_seconds
        )

    def process(self, batch_id: int, learner_id: int) -> Outcome | None:
        """Apply the batch's action to one learner. None when there was nothing
        to do: the item is finished already, or the batch is not running."""
        ctx = self.context(batch_id)
        if ctx is None:
            return None
        prepared = self.one_statement(batch_id)
        if prepared is not None:
            token = new_token_hash() if ctx.action == Action.RESEND_INVITATION else None
            outcome = statements.run(self.connections, prepared, learner_id, token)
            if outcome is None:
                return None
        else:
            with self.sessions() as session, session.begin():
                if not claim_item(session, batch_id, learner_id):
                    return None
                outcome = apply_action(
                    session,
                    ctx.action,
                    Actor(ctx.school_id, ctx.actor_id),
                    learner_id,
                    ctx.params,
                    batch_id=ctx.batch_id,
                    grace_seconds=self.settings.deletion_grace_seconds,
                    invite_cooldown_seconds=self.settings.invite_cooldown_seconds,
                )
                record_outcome(session, batch_id, learner_id, outcome)
        self.count(ctx, outcome)
        return outcome

    def record_failure(self, batch_id: int, learner_id: int, error: str) -> Outcome | None:
        """Mark a still-pending item failed (permanent error, or retries exhausted)."""
        ctx = self.context(batch_id)
        if ctx is None:
            return None
        outcome = Outcome.failed(error)
        with self.sessions() as session, session.begin():
            if not record_outcome(session, batch_id, learner_id, outcome, pending_only=True):
                return None
        self.count(ctx, outcome)
        return outcome

    def count(self, ctx: BatchContext, outcome: Outcome) -> None:
        """Count in Redis (buffered); the flush that brings the count to the
        total completes the batch. Without Redis, the dispatcher completes it
        from the database."""
        if self.buffer is not None:
            self.buffer.record(ctx.batch_id, outcome.label)

    def _complete_when_counted(self, batch_id: int, done: int) -> None:
        ctx = self.context(batch_id)
        if ctx is not None and done >= ctx.total:
            with self.sessions() as session, session.begin():
                complete_if_finished(session, batch_id)

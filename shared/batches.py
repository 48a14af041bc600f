"""A batch's lifecycle after it is frozen: counts, completion, cancel.

Counts are always recomputable from batch_items; the final ones are written
to the batch row once, when the batch ends, so no row is updated per learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Select, Update, and_, exists, func, select, update
from sqlalchemy.orm import Session

from shared.audit import Event, record_batch_event, record_finished_items, who_removed_access
from shared.db import now
from shared.models import (
    CANCELLABLE_BATCH_STATUSES,
    PENDING_ITEM,
    Batch,
    BatchItem,
    BatchStatus,
    ItemOutcome,
)
from shared.webhooks import record_batch_end

CANCEL_CHUNK = 5000


def counts_from_items(session: Session, batch_id: int) -> dict[str, Any]:
    """Items by outcome, and skips by reason, straight from the database."""
    rows = (
        session.connection()
        .execute(
            select(BatchItem.outcome, BatchItem.reason, func.count())
            .where(BatchItem.batch_id == batch_id)
            .group_by(BatchItem.outcome, BatchItem.reason)
        )
        .all()
    )
    return shape_counts((outcome, reason, n) for outcome, reason, n in rows)


def shape_counts(rows) -> dict[str, Any]:
    counts: dict[str, Any] = {o.value: 0 for o in ItemOutcome}
    reasons: dict[str, int] = {}
    for outcome, reason, n in rows:
        counts[outcome] = counts.get(outcome, 0) + n
        if reason:
            reasons[reason] = reasons.get(reason, 0) + n
    counts["reasons"] = reasons
    return counts


def counts_from_labels(labels: dict[str, int], total: int) -> dict[str, Any]:
    """Counts in the same shape from Redis progress labels (`applied`, `skipped:self`...)."""
    rows = []
    for label, n in labels.items():
        if label == "done":
            continue
        outcome, _, reason = label.partition(":")
        rows.append((outcome, reason or None, n))
    counts = shape_counts(rows)
    finished = sum(v for k, v in counts.items() if k not in ("pending", "reasons"))
    counts["pending"] = max(total - finished, 0)
    return counts


def move_item(
    session: Session, batch_id: int, learner_id: int, was: ItemOutcome, **values: Any
) -> bool:
    """Change an item that is still `was` (reopen a failed one, fail an
    applied one); False when it has moved on meanwhile."""
    moved = session.connection().execute(
        update(BatchItem)
        .where(
            BatchItem.batch_id == batch_id,
            BatchItem.learner_id == learner_id,
            BatchItem.outcome == was,
        )
        .values(**values)
    )
    return bool(moved.rowcount)


def complete_if_finished(session: Session, batch_id: int) -> bool:
    """Mark a running batch `completed` once no item is pending, with final
    counts from the items. Safe to call from anywhere, any number of times."""
    pending = exists().where(BatchItem.batch_id == batch_id, PENDING_ITEM)
    if session.connection().scalar(select(pending)):
        return False
    counts = counts_from_items(session, batch_id)
    done = (
        session.connection()
        .execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING, ~pending)
            .values(status=BatchStatus.COMPLETED, counts=counts, finished_at=now())
        )
        .rowcount
    )
    if done:
        record_finished_items(session, batch_id, until_done=True)
        record_batch_event(session, batch_id, Event.BATCH_FINISHED, outcome=BatchStatus.COMPLETED)
        record_batch_end(session, batch_id, BatchStatus.COMPLETED)
    return bool(done)


class CancelReason(StrEnum):
    """Why a batch was cancelled, shown with it (`batches.cancel_reason`)."""

    BY_ADMIN = "cancelled_by_admin"
    ADMIN_LOST_ACCESS = "admin_lost_access"


def cancelling(where: ColumnElement[bool], reason: CancelReason) -> Update:
    """Move the matching unfinished batches to `cancelling`: the claim refuses
    their items from now on, and the dispatch loop's `cancel_step` ends them."""
    return (
        update(Batch)
        .where(where, Batch.status.in_(CANCELLABLE_BATCH_STATUSES))
        .values(status=BatchStatus.CANCELLING, cancel_reason=reason.value)
    )


def request_cancel(
    session: Session, batch_id: int, reason: CancelReason, actor_id: int | None = None
) -> bool:
    """Stop new learners from starting; `cancel_step` finishes the job. The
    audit trail says who cancelled, in the same transaction."""
    changed = bool(session.connection().execute(cancelling(Batch.id == batch_id, reason)).rowcount)
    if changed:
        record_batch_event(
            session, batch_id, Event.BATCH_CANCELLED, actor_id=actor_id, reason=reason.value
        )
    return changed


def _audit_lost_access_cancel(session: Session, batch_id: int) -> None:
    """A batch cancelled because its admin lost access was moved to
    `cancelling` inside the worker's statement that deactivated or deleted
    that admin (`cancel_submitted_by`, one of the rule's `revocations`), which
    writes no batch event; the cancel step that ends the batch records it
    (once: only one step moves it from `cancelling` to `cancelled`), naming
    the admin whose change cancelled it. A batch an admin cancelled through
    the API has its event already and another reason."""
    reason = session.connection().scalar(select(Batch.cancel_reason).where(Batch.id == batch_id))
    if reason != CancelReason.ADMIN_LOST_ACCESS:
        return
    record_batch_event(
        session,
        batch_id,
        Event.BATCH_CANCELLED,
        actor_id=who_removed_access(session, batch_id),
        reason=CancelReason.ADMIN_LOST_ACCESS.value,
    )


def cancel_submitted_by(admin_ids: Select[Any]) -> Update:
    """Cancel the unfinished batches these admins submitted. An admin who loses
    access must not go on changing learners through batches queued earlier
    (and the audit trail would show a revoked admin doing so)."""
    return cancelling(Batch.actor_id.in_(admin_ids), CancelReason.ADMIN_LOST_ACCESS)


def cancel_step(session: Session, batch_id: int, chunk: int = CANCEL_CHUNK) -> int:
    """Mark up to `chunk` pending items `cancelled`; when none are left, the
    batch becomes `cancelled`. What was applied stays applied."""
    stamp = now()
    chunk_ids = (
        select(BatchItem.learner_id)
        .where(BatchItem.batch_id == batch_id, PENDING_ITEM)
        .limit(chunk)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Items a worker holds right now finish as that worker decides.
        chunk_ids = chunk_ids.with_for_update(skip_locked=True)
    cancelled = (
        session.connection()
        .execute(
            update(BatchItem)
            .where(
                and_(
                    BatchItem.batch_id == batch_id,
                    PENDING_ITEM,
                    BatchItem.learner_id.in_(chunk_ids.scalar_subquery()),
                )
            )
            .values(outcome=ItemOutcome.CANCELLED, finished_at=stamp)
        )
        .rowcount
    )
    if cancelled == 0:
        pending = session.connection().scalar(
            select(exists().where(BatchItem.batch_id == batch_id, PENDING_ITEM))
        )
        if not pending:
            ended = (
                session.connection()
                .execute(
                    update(Batch)
                    .where(Batch.id == batch_id, Batch.status == BatchStatus.CANCELLING)
                    .values(
                        status=BatchStatus.CANCELLED,
                        counts=counts_from_items(session, batch_id),
                        finished_at=stamp,
                    )
                )
                .rowcount
            )
            if ended:
                record_finished_items(session, batch_id, until_done=True)
                _audit_lost_access_cancel(session, batch_id)
                record_batch_event(
                    session, batch_id, Event.BATCH_FINISHED, outcome=BatchStatus.CANCELLED
                )
                record_batch_end(session, batch_id, BatchStatus.CANCELLED)
    return cancelled


@dataclass(frozen=True)
class BatchContext:
    """What a worker needs to apply a batch's action: fixed at submit time, so
    it is cached per process and costs no query per learner."""

    batch_id: int
    school_id: int
    actor_id: int | None
    action: str
    params: dict[str, Any]
    total: int


def load_context(session: Session, batch_id: int) -> BatchContext | None:
    row = (
        session.connection()
        .execute(
            select(Batch.school_id, Batch.actor_id, Batch.action, Batch.params, Batch.total).where(
                Batch.id == batch_id
            )
        )
        .first()
    )
    if row is None:
        return None
    return BatchContext(
        batch_id, row.school_id, row.actor_id, row.action, row.params or {}, row.total
    )

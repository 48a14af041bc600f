"""Retrying a batch: a new batch of the learners whose items ended `failed`.

A failure is an error the workers gave up on (a database that stayed away,
a dead-lettered message); the admin should not have to rebuild the
selection to try those learners again. The retry is a batch like any other:
same action and params, submitted by the retrying admin under the same
limits (producer/submit.py), its own Idempotency-Key, and `retry_of` naming
the original. Its items are frozen with one `INSERT ... SELECT` from the
original's failed items, in the request's one transaction.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import exists, insert, literal, select
from sqlalchemy.orm import Session

from producer.idempotency import IdempotencyKey
from producer.submit import (
    SubmitError,
    Submitted,
    admit,
    check_quota_with_batch,
    earlier,
    new_batch,
)
from shared.actions import Actor
from shared.models import FINISHED_BATCH_STATUSES, Batch, BatchItem, ItemOutcome

FAILED = ItemOutcome.FAILED.value


def retry_hash(batch_id: int) -> str:
    """The "body" an Idempotency-Key of a retry is checked against: the
    original batch, so one key cannot retry two batches."""
    return hashlib.sha256(f"retry:{batch_id}".encode()).hexdigest()


def retry_failed(
    session: Session,
    actor: Actor,
    batch_id: int,
    idempotency_key: IdempotencyKey | None = None,
    max_active_batches: int | None = None,
    learners_per_hour: int | None = None,
) -> Submitted:
    """Create the retry batch of `batch_id`'s failed items, or return the one
    this Idempotency-Key already made."""
    original = session.scalar(
        select(Batch).where(Batch.id == batch_id, Batch.school_id == actor.school_id)
    )
    if original is None:  # another school's batch looks exactly like a missing one
        raise SubmitError(404, None, f"no batch {batch_id} in your school")
    fingerprints, replayed = earlier(session, actor, idempotency_key, retry_hash(batch_id))
    if replayed is not None:
        return replayed
    _check_retryable(session, original)
    admit(session, actor, max_active_batches, learners_per_hour)
    created = new_batch(
        session,
        actor,
        idempotency_key,
        fingerprints,
        action=original.action,
        params=original.params,
        selection={"failed_items_of": original.id},
        retry_of=original.id,
    )
    if isinstance(created, Submitted):
        return created
    total = _freeze_failed(session, created.id, original.id)
    if total == 0:  # reopened since the check (a dead letter replayed)
        raise _nothing_failed(original)
    created.total = total
    session.flush()
    check_quota_with_batch(session, actor, learners_per_hour)
    return Submitted(created)


def _check_retryable(session: Session, original: Batch) -> None:
    """Only a finished batch: while it runs, more of its items may still fail
    (or still succeed on a transient error's retry)."""
    if original.status not in FINISHED_BATCH_STATUSES:
        raise SubmitError(
            409,
            None,
            f"batch {original.id} is {original.status}; retry it once it has finished",
        )
    failed = session.scalar(
        select(exists().where(BatchItem.batch_id == original.id, BatchItem.outcome == FAILED))
    )
    if not failed:
        raise _nothing_failed(original)


def _nothing_failed(original: Batch) -> SubmitError:
    return SubmitError(409, None, f"batch {original.id} has no failed learners; nothing to retry")


def _freeze_failed(session: Session, batch_id: int, original_id: int) -> int:
    failed = select(literal(batch_id), BatchItem.learner_id).where(
        BatchItem.batch_id == original_id, BatchItem.outcome == FAILED
    )
    return (
        session.connection()
        .execute(
            insert(BatchItem)
            .from_select(["batch_id", "learner_id"], failed)
            .execution_options(preserve_rowcount=True)
        )
        .rowcount
    )

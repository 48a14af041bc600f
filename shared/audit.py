"""What goes into the audit trail (`audit_log`), and when.

Events (a batch submitted, cancelled and by whom, finished; an API token
issued or revoked) are written by whoever makes the change, in the same
transaction, with `record`. An event is an `audit_log` row whose `action`
names it (`batch.submitted`, ...) and whose `learner_id` is NULL, except
token events, which name the token's admin there (learners appear by id
only, never by email or name).

Per-learner outcomes are copied from the batch's items by
`record_finished_items`, a chunk at a time, by the dispatch loop and when the
batch ends. The item is written in the worker's transaction together with the
change (the item is the record of it); the audit row is its copy that
outlives the batch (retention removes batches and items long before the
trail). Copying set-based keeps an insert and its four index entries out of
every learner's statement (#16).
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.orm import Session, aliased

from shared.contract import Action
from shared.models import PENDING_ITEM, AuditEntry, Batch, BatchItem, ItemOutcome

# Items copied per statement: a dispatch pass copies at most this many, and a
# batch that ends copies what is left in statements of this size.
AUDIT_CHUNK = 10_000

# Finished items that go into the trail. `cancelled` items get no row: nothing
# happened to those learners, and the batch's events say so.
AUDITED_OUTCOMES = (ItemOutcome.APPLIED, ItemOutcome.SKIPPED, ItemOutcome.FAILED)

RECORDED = "recorded"


class Event(StrEnum):
    """Names of the events in `audit_log.action` (String(32))."""

    BATCH_SUBMITTED = "batch.submitted"
    BATCH_CANCELLED = "batch.cancelled"
    # outcome: the batch's final status (completed, cancelled, failed)
    BATCH_FINISHED = "batch.finished"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"


def record(
    session: Session,
    school_id: int,
    event: Event,
    *,
    actor_id: int | None = None,
    batch_id: int | None = None,
    learner_id: int | None = None,
    token_id: int | None = None,
    outcome: str = RECORDED,
    reason: str | None = None,
) -> None:
    """Write one event in the caller's transaction (never on its own: an
    event without its change, or a change without its event, is a lie)."""
    session.connection().execute(
        insert(AuditEntry).values(
            school_id=school_id,
            actor_id=actor_id,
            learner_id=learner_id,
            batch_id=batch_id,
            token_id=token_id,
            action=event.value,
            outcome=outcome,
            reason=reason,
        )
    )


def record_batch_event(
    session: Session,
    batch_id: int,
    event: Event,
    *,
    actor_id: int | None = None,
    outcome: str = RECORDED,
    reason: str | None = None,
) -> None:
    """An event of a batch, in its school."""
    school_id = session.connection().scalar(select(Batch.school_id).where(Batch.id == batch_id))
    if school_id is not None:
        record(
            session,
            school_id,
            event,
            actor_id=actor_id,
            batch_id=batch_id,
            outcome=outcome,
            reason=reason,
        )


def record_finished_items(session: Session, batch_id: int, *, until_done: bool = False) -> int:
    """Copy the batch's finished items into the trail, in learner id order,
    from where the last copy stopped up to the first item still pending; with
    `until_done`, every chunk left (the batch has ended), otherwise one chunk.
    Returns how many rows were written.

    The batch row is locked, so two copies never overlap. An
    item never goes back to pending, so everything below the first pending
    one is final; the only later move, an applied invitation whose email
    fails, writes its own `failed` row (`workers.mail.fail_applied_item`).
    Items skipped at submit time (ids that are no learner of the school) have
    no `finished_at` and no row, as no learner was touched."""
    connection = session.connection()
    # Callers hold the row already; locking it here too keeps two copies
    # from overlapping whoever calls (a second lock by the holder is free).
    batch = connection.execute(
        select(Batch.school_id, Batch.actor_id, Batch.action, Batch.audited_through)
        .where(Batch.id == batch_id)
        .with_for_update()
    ).first()
    if batch is None or batch.audited_through is None:
        return 0  # a batch from before migration 0010: its workers wrote its rows
    of_batch = BatchItem.batch_id == batch_id
    first_pending = connection.scalar(
        select(func.min(BatchItem.learner_id)).where(of_batch, PENDING_ITEM)
    )
    final = (
        first_pending - 1
        if first_pending is not None
        else connection.scalar(select(func.max(BatchItem.learner_id)).where(of_batch))
    )
    written, through = 0, batch.audited_through
    while final is not None and through < final:
        # The chunk ends at the AUDIT_CHUNK-th item after `through`, or at `final`.
        chunk_end = connection.scalar(
            select(BatchItem.learner_id)
            .where(of_batch, BatchItem.learner_id > through, BatchItem.learner_id <= final)
            .order_by(BatchItem.learner_id)
            .offset(AUDIT_CHUNK - 1)
            .limit(1)
        )
        upto = final if chunk_end is None else chunk_end
        rows = (
            select(
                literal(batch.school_id),
                literal(batch.actor_id),
                BatchItem.learner_id,
                literal(batch_id),
                literal(batch.action),
                BatchItem.outcome,
                BatchItem.reason,
                BatchItem.finished_at,
            )
            .where(
                of_batch,
                BatchItem.learner_id > through,
                BatchItem.learner_id <= upto,
                BatchItem.outcome.in_([o.value for o in AUDITED_OUTCOMES]),
                BatchItem.finished_at.is_not(None),
            )
            .order_by(BatchItem.learner_id)
        )
        written += connection.execute(
            insert(AuditEntry)
            .from_select(
                [
                    "school_id",
                    "actor_id",
                    "learner_id",
                    "batch_id",
                    "action",
                    "outcome",
                    "reason",
                    "created_at",
                ],
                rows,
            )
            .execution_options(preserve_rowcount=True)
        ).rowcount
        through = upto
        if not until_done:
            break
    if through != batch.audited_through:
        connection.execute(
            update(Batch).where(Batch.id == batch_id).values(audited_through=through)
        )
    return written


def who_removed_access(session: Session, batch_id: int) -> int | None:
    """The admin whose deactivate or delete of this batch's submitter was
    applied last: who, in effect, cancelled a batch `admin_lost_access`.
    Read from the items, which the statement that removed the access wrote
    (its audit row may not be copied yet)."""
    submitter = select(Batch.actor_id, Batch.school_id).where(Batch.id == batch_id).subquery()
    remover = aliased(Batch)
    return session.connection().scalar(
        select(remover.actor_id)
        .join(BatchItem, BatchItem.batch_id == remover.id)
        .where(
            remover.school_id == submitter.c.school_id,
            remover.action.in_((Action.DEACTIVATE_LEARNER, Action.DELETE_LEARNER)),
            BatchItem.learner_id == submitter.c.actor_id,
            BatchItem.outcome == ItemOutcome.APPLIED,
        )
        .order_by(BatchItem.finished_at.desc())
        .limit(1)
    )


def record_submitted(session: Session, school_id: int, batch_id: int, actor_id: int | None) -> None:
    """`batch.submitted`, in the transaction that creates the batch (every
    route that creates one calls it before its commit)."""
    record(session, school_id, Event.BATCH_SUBMITTED, actor_id=actor_id, batch_id=batch_id)

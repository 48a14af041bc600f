"""Audit events that are not one learner's outcome: a batch submitted,
cancelled (and by whom), finished; an API token issued or revoked.

Per-learner outcomes are written by the workers with the change itself
(`workers/statements.py`, `workers/items.py`); these events are written by
whoever makes the change, in the same transaction, with `record`. An event
is an `audit_log` row whose `action` names it (`batch.submitted`, ...) and
whose `learner_id` is NULL, except token events, which name the token's
admin there (learners appear by id only, never by email or name).
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from shared.contract import Action
from shared.models import AuditEntry, Batch, ItemOutcome

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


def who_removed_access(session: Session, batch_id: int) -> int | None:
    """The admin whose deactivate or delete of this batch's submitter was
    applied last: who, in effect, cancelled a batch `admin_lost_access`.
    Read from the per-learner trail, which the same statement wrote."""
    submitter = select(Batch.actor_id, Batch.school_id).where(Batch.id == batch_id).subquery()
    return session.connection().scalar(
        select(AuditEntry.actor_id)
        .join(submitter, AuditEntry.school_id == submitter.c.school_id)
        .where(
            AuditEntry.learner_id == submitter.c.actor_id,
            AuditEntry.action.in_((Action.DEACTIVATE_LEARNER, Action.DELETE_LEARNER)),
            AuditEntry.outcome == ItemOutcome.APPLIED,
        )
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )


def record_submitted(session: Session, school_id: int, batch_id: int, actor_id: int | None) -> None:
    """`batch.submitted`, in the transaction that creates the batch (every
    route that creates one calls it before its commit)."""
    record(session, school_id, Event.BATCH_SUBMITTED, actor_id=actor_id, batch_id=batch_id)

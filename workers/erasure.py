"""Finalize deletion: purge everything a deleted learner left behind.

What remains is a tombstone: the learner row with its id, school and status
`deleted`, and no email or name. The audit log refers to learners by id only,
so it stays and becomes pseudonymous.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db import now
from shared.models import (
    ActivityEvent,
    ApiToken,
    CourseEnrollment,
    CourseProgress,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSession,
    LearnerSettings,
    LearnerStatus,
    LearningPathEnrollment,
    SharedLink,
)
from shared.outcomes import Outcome, Reason

# Everything keyed by learner that finalize deletion removes. A test scans every
# table in the metadata for the learner's PII, so a table added to the model
# and forgotten here makes that test fail.
PURGED_BY_LEARNER = (
    LearnerSettings,
    CourseProgress,
    ActivityEvent,
    CourseEnrollment,
    LearningPathEnrollment,
    GroupMembership,
    LearnerSession,
    SharedLink,
    Invitation,
    ApiToken,
)


@cache
def _purge_statement() -> str:
    """The purge below as one PostgreSQL statement: lock the learner, delete
    every row keyed by them and leave the tombstone, only if still `deleting`;
    answer the status found. One round trip instead of thirteen."""
    purges = ",\n".join(
        f"purge_{model.__tablename__} AS (DELETE FROM {model.__tablename__} "
        "WHERE learner_id IN (SELECT id FROM doomed))"
        for model in PURGED_BY_LEARNER
    )
    return f"""
WITH target AS (
    SELECT id, status FROM learners
    WHERE id = %(learner)s AND (%(school)s::bigint IS NULL OR school_id = %(school)s::bigint)
    FOR UPDATE
),
doomed AS (SELECT id FROM target WHERE status = '{LearnerStatus.DELETING}'),
{purges},
tombstone AS (
    UPDATE learners l
    SET email = NULL, name = NULL, is_admin = false, status = '{LearnerStatus.DELETED}',
        deleted_at = now(), deletion_due_at = NULL, updated_at = now(), activated_at = NULL
    FROM doomed d WHERE l.id = d.id
)
SELECT status FROM target"""


def finalize_deletion(session: Session, learner_id: int, school_id: int | None = None) -> Outcome:
    """Purge a learner in `deleting`. Safe to run twice and from several
    processes: the learner row is locked first, and a `deleted` learner skips."""
    if session.get_bind().dialect.name == "postgresql":
        row = (
            session.connection()
            .exec_driver_sql(_purge_statement(), {"learner": learner_id, "school": school_id})
            .first()
        )
        return _purged(None if row is None else row[0])
    query = select(Learner.status).where(Learner.id == learner_id)
    if school_id is not None:
        query = query.where(Learner.school_id == school_id)
    status = session.connection().scalar(query.with_for_update())
    if status != LearnerStatus.DELETING:
        return _purged(status)
    purge_learners(session, [learner_id])
    return Outcome.applied()


def purge_learners(session: Session, learner_ids: list[int]) -> None:
    """Delete every row keyed by these learners and leave tombstones. The
    caller has locked the learner rows and checked they are `deleting`."""
    for model in PURGED_BY_LEARNER:
        session.connection().execute(delete(model).where(model.learner_id.in_(learner_ids)))
    stamp = now()
    session.connection().execute(
        update(Learner)
        .where(Learner.id.in_(learner_ids))
        .values(
            email=None,
            name=None,
            is_admin=False,
            status=LearnerStatus.DELETED,
            deleted_at=stamp,
            deletion_due_at=None,
            updated_at=stamp,
            activated_at=None,
        )
    )


def _purged(status: str | None) -> Outcome:
    """The outcome of a purge that found the learner in `status`."""
    if status is None:
        return Outcome.skipped(Reason.NOT_FOUND)
    if status == LearnerStatus.DELETED:
        return Outcome.skipped(Reason.ALREADY_DELETED)
    if status != LearnerStatus.DELETING:
        # Only a learner someone chose to delete is ever purged.
        return Outcome.failed(f"learner is {status}, not deleting")
    return Outcome.applied()

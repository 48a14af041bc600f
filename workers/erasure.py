"""Finalize deletion: purge everything a deleted learner left behind.

What remains is a tombstone: the learner row with its id, school and status
`deleted`, and no email, name or external id (the school's own identifier of
the person is personal data too, and freed for reuse). The audit log refers
to learners by id only, so it stays and becomes pseudonymous.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Delete, Update, delete, func, insert, select, update
from sqlalchemy.orm import Session

from shared.models import (
    ActivityEvent,
    ApiToken,
    AuditEntry,
    CourseEnrollment,
    CourseProgress,
    GroupMembership,
    Invitation,
    ItemOutcome,
    Learner,
    LearnerSession,
    LearnerSettings,
    LearnerStatus,
    LearningPathEnrollment,
    SharedLink,
)

# The audit action of a purge.
FINALIZE = "finalize_deletion"

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


def purge_statements(learner_ids: Sequence[int]) -> list[Delete | Update]:
    """The purge, as statements over a set of learners already locked and
    known to be `deleting`: delete every row keyed by them, leave tombstones."""
    stamp = func.now()
    purges: list[Delete | Update] = [
        delete(model).where(model.learner_id.in_(learner_ids)) for model in PURGED_BY_LEARNER
    ]
    tombstone = (
        update(Learner)
        .where(Learner.id.in_(learner_ids))
        .values(
            email=None,
            name=None,
            external_id=None,
            is_admin=False,
            status=LearnerStatus.DELETED.value,
            deleted_at=stamp,
            deletion_due_at=None,
            deletion_leased_until=None,
            updated_at=stamp,
            activated_at=None,
        )
    )
    return [*purges, tombstone]


def purge_deleting(session: Session, school_id: int, learner_ids: Sequence[int]) -> int:
    """Purge those of these learners that are still `deleting` in this school,
    with their `finalize_deletion` audit rows, in the session's transaction.
    Another school's learner, an unknown id or one already purged is left
    alone, so purging the same ids twice, or from two processes at once,
    purges each learner once. Returns how many it purged."""
    lock = (
        select(Learner.id)
        .where(
            Learner.id.in_(learner_ids),
            Learner.school_id == school_id,
            Learner.status == LearnerStatus.DELETING,
        )
        # In id order, so two purges of overlapping chunks cannot deadlock.
        .order_by(Learner.id)
        .with_for_update()
    )
    doomed = list(session.scalars(lock))
    if not doomed:
        return 0
    connection = session.connection()
    for statement in purge_statements(doomed):
        connection.execute(statement)
    connection.execute(
        insert(AuditEntry),
        [
            {
                "school_id": school_id,
                "learner_id": learner_id,
                "action": FINALIZE,
                "outcome": ItemOutcome.APPLIED.value,
            }
            for learner_id in doomed
        ],
    )
    return len(doomed)

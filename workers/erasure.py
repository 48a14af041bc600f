"""Finalize deletion: purge everything a deleted learner left behind.

What remains is a tombstone: the learner row with its id, school and status
`deleted`, and no email, name or external id (the school's own identifier of
the person is personal data too, and freed for reuse). The audit log refers
to learners by id only, so it stays and becomes pseudonymous.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Delete,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
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
from shared.outcomes import Outcome, Reason
from workers.statements import Connections, execute_statement

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


def purge_statements(learner_ids: Select[Any] | Sequence[int]) -> list[Delete | Update]:
    """The purge, as statements over a set of learners already locked and
    known to be `deleting`: delete every row keyed by them, leave tombstones.
    Both the single finalize (one statement on PostgreSQL) and the bulk sweep
    of the reconciler run exactly these."""
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
            updated_at=stamp,
            activated_at=None,
        )
    )
    return [*purges, tombstone]


LEARNER = bindparam("learner", type_=BigInteger)
SCHOOL = bindparam("school", type_=BigInteger)


@cache
def _one_statement(audited: bool = False) -> Select[Any]:
    """The purge as one PostgreSQL statement: lock the learner, run every
    purge statement as a CTE if they are still `deleting`, and answer the
    status found. One round trip instead of thirteen. `audited` adds the
    `finalize_deletion` audit row of a learner it purges, as a CTE too."""
    target = (
        select(Learner.id, Learner.school_id, Learner.status)
        .where(Learner.id == LEARNER, SCHOOL.is_(None) | (Learner.school_id == SCHOOL))
        .with_for_update()
        .cte("target")
    )
    doomed = select(target.c.id).where(target.c.status == LearnerStatus.DELETING.value)
    purges = [statement.cte(f"purge_{n}") for n, statement in enumerate(purge_statements(doomed))]
    if audited:
        audit = insert(AuditEntry).from_select(
            ["school_id", "learner_id", "action", "outcome"],
            select(
                target.c.school_id,
                target.c.id,
                literal(FINALIZE),
                literal(ItemOutcome.APPLIED.value),
            ).where(target.c.status == LearnerStatus.DELETING.value),
        )
        purges.append(audit.cte("audit"))
    return select(target.c.status).add_cte(*purges)


def finalize_audited(connections: Connections, learner_id: int, school_id: int) -> Outcome:
    """`finalize_deletion` with its audit row, as one statement on the
    thread's autocommit connection (PostgreSQL): one round trip, no pool
    checkout, BEGIN or COMMIT around it."""
    params = {"learner": learner_id, "school": school_id}
    row = execute_statement(connections, _one_statement(audited=True), params).fetchone()
    return _purged(row[0] if row else None)


def finalize_deletion(session: Session, learner_id: int, school_id: int | None = None) -> Outcome:
    """Purge a learner in `deleting`. Safe to run twice and from several
    processes: the learner row is locked first, and a `deleted` learner skips."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        params = {"learner": learner_id, "school": school_id}
        return _purged(connection.execute(_one_statement(), params).scalar())
    query = select(Learner.status).where(Learner.id == learner_id)
    if school_id is not None:
        query = query.where(Learner.school_id == school_id)
    status = connection.scalar(query.with_for_update())
    if status == LearnerStatus.DELETING:
        purge_learners(session, [learner_id])
    return _purged(status)


def purge_learners(session: Session, learner_ids: list[int]) -> None:
    """Purge these learners; the caller has locked their rows and checked
    they are `deleting`."""
    for statement in purge_statements(learner_ids):
        session.connection().execute(statement)


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

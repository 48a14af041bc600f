"""The five batch actions as plain functions on one learner.

Each takes a session (the caller owns the transaction), the school and acting
admin, and one learner id, and returns an `Outcome`. None of them loads ORM
objects: the applied path is one statement, and only a skip asks a second
question (why nothing changed). Every statement is scoped to the school, so an
id of another school is indistinguishable from an id that does not exist.

Applying an action twice changes nothing the second time and reports a skip.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import case, delete, literal, select, update
from sqlalchemy.orm import Session

from shared.db import insert_ignoring_duplicates, now
from shared.models import (
    ApiToken,
    CourseEnrollment,
    Group,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSession,
    LearnerStatus,
    SharedLink,
)
from shared.models import Course as CourseModel
from shared.outcomes import Outcome, Reason

LIVE = (LearnerStatus.INVITED, LearnerStatus.ACTIVE)
GONE = (LearnerStatus.DELETING, LearnerStatus.DELETED)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, and in which school: fixed by the API token."""

    school_id: int
    admin_id: int | None


def _status(session: Session, actor: Actor, learner_id: int) -> str | None:
    return session.connection().scalar(
        select(Learner.status).where(Learner.id == learner_id, Learner.school_id == actor.school_id)
    )


def _skip_reason(status: str | None, when_live: Reason) -> Reason:
    """Why an action that only touches live learners changed nothing."""
    if status is None:
        return Reason.NOT_FOUND
    if status in GONE:
        return Reason.ALREADY_DELETED
    if status == LearnerStatus.DEACTIVATED:
        return Reason.ALREADY_DEACTIVATED
    return when_live


def new_token_hash() -> str:
    """The stored hash of a new invitation's secret (the link is signed from it)."""
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


def resend_invitation(
    session: Session, actor: Actor, learner_id: int, batch_id: int | None = None
) -> Outcome:
    """Queue an invitation email (an outbox row) for a learner who has not activated.

    The outbox row is unique per (batch, learner): a redelivered message of the
    same batch finds it and skips, so one batch never invites anyone twice.
    """
    token_hash = new_token_hash()
    eligible = select(Learner.school_id, Learner.id, literal(batch_id), literal(token_hash)).where(
        Learner.id == learner_id,
        Learner.school_id == actor.school_id,
        Learner.status == LearnerStatus.INVITED,
    )
    inserted = (
        session.connection()
        .execute(
            insert_ignoring_duplicates(session, Invitation.__table__).from_select(
                ["school_id", "learner_id", "batch_id", "token_hash"], eligible
            )
        )
        .rowcount
    )
    if inserted:
        return Outcome.applied()
    status = _status(session, actor, learner_id)
    if status == LearnerStatus.ACTIVE:
        return Outcome.skipped(Reason.ALREADY_ACTIVE)
    return Outcome.skipped(_skip_reason(status, Reason.ALREADY_INVITED))


def _grant(
    session: Session,
    actor: Actor,
    learner_id: int,
    target_ids: Sequence[int],
    target_model: type[Group] | type[CourseModel],
    link_table,
    link_column: str,
    when_present: Reason,
) -> Outcome:
    """Insert learner-to-target rows for the targets of this school that are missing."""
    rows = (
        select(Learner.id, target_model.id)
        .join(target_model, target_model.school_id == Learner.school_id)
        .where(
            Learner.id == learner_id,
            Learner.school_id == actor.school_id,
            Learner.status.not_in(GONE),
            target_model.id.in_(list(target_ids)),
        )
    )
    inserted = (
        session.connection()
        .execute(
            insert_ignoring_duplicates(session, link_table).from_select(
                ["learner_id", link_column], rows
            )
        )
        .rowcount
    )
    if inserted:
        return Outcome.applied()
    status = _status(session, actor, learner_id)
    if status is None:
        return Outcome.skipped(Reason.NOT_FOUND)
    if status in GONE:
        return Outcome.skipped(Reason.ALREADY_DELETED)
    return Outcome.skipped(when_present)


def add_to_group(
    session: Session, actor: Actor, learner_id: int, group_ids: Sequence[int]
) -> Outcome:
    """Make the learner a member of each group; membership grants the groups'
    courses and learning paths (see `producer.access`). Groups of other schools
    are ignored here; the producer rejects them before a batch exists."""
    return _grant(
        session,
        actor,
        learner_id,
        group_ids,
        Group,
        GroupMembership.__table__,
        "group_id",
        Reason.ALREADY_MEMBER,
    )


def add_to_course(
    session: Session, actor: Actor, learner_id: int, course_ids: Sequence[int]
) -> Outcome:
    """Enroll the learner in each course."""
    return _grant(
        session,
        actor,
        learner_id,
        course_ids,
        CourseModel,
        CourseEnrollment.__table__,
        "course_id",
        Reason.ALREADY_ENROLLED,
    )


def revoke_access(session: Session, learner_id: int) -> None:
    """Close every way in at once: sessions, shared links (SSO ones included), API tokens."""
    stamp = now()
    session.connection().execute(
        delete(LearnerSession).where(LearnerSession.learner_id == learner_id)
    )
    session.connection().execute(
        update(SharedLink)
        .where(SharedLink.learner_id == learner_id, SharedLink.revoked_at.is_(None))
        .values(revoked_at=stamp)
    )
    session.connection().execute(
        update(ApiToken)
        .where(ApiToken.learner_id == learner_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=stamp)
    )


def deactivate_learner(session: Session, actor: Actor, learner_id: int) -> Outcome:
    """Revoke access; analytics, settings, memberships and enrollments are kept
    so that `reactivate_learner` restores the learner as they were."""
    if learner_id == actor.admin_id:
        return Outcome.skipped(Reason.SELF)
    stamp = now()
    changed = (
        session.connection()
        .execute(
            update(Learner)
            .where(
                Learner.id == learner_id,
                Learner.school_id == actor.school_id,
                Learner.status.in_(LIVE),
            )
            .values(status=LearnerStatus.DEACTIVATED, deactivated_at=stamp, updated_at=stamp)
        )
        .rowcount
    )
    if not changed:
        return Outcome.skipped(
            _skip_reason(_status(session, actor, learner_id), Reason.ALREADY_DEACTIVATED)
        )
    revoke_access(session, learner_id)
    return Outcome.applied()


def delete_learner(
    session: Session, actor: Actor, learner_id: int, grace_seconds: int = 0
) -> Outcome:
    """Mark the learner `deleting` (shown as deactivated), revoke access at once,
    and set when `finalize_deletion` is due. The purge itself happens later so
    a large delete batch stays cheap per learner."""
    if learner_id == actor.admin_id:
        return Outcome.skipped(Reason.SELF)
    stamp = now()
    changed = (
        session.connection()
        .execute(
            update(Learner)
            .where(
                Learner.id == learner_id,
                Learner.school_id == actor.school_id,
                Learner.status.not_in(GONE),
            )
            .values(
                status=LearnerStatus.DELETING,
                deactivated_at=stamp,
                updated_at=stamp,
                deletion_due_at=stamp + timedelta(seconds=grace_seconds),
            )
        )
        .rowcount
    )
    if not changed:
        status = _status(session, actor, learner_id)
        return Outcome.skipped(Reason.NOT_FOUND if status is None else Reason.ALREADY_DELETED)
    revoke_access(session, learner_id)
    return Outcome.applied()


def reactivate_learner(session: Session, actor: Actor, learner_id: int) -> Outcome:
    """The undo of deactivate: back to `active`, or `invited` if never activated.
    Revoked sessions and shared links stay revoked; they are credentials."""
    stamp = now()
    never_activated = case(
        (Learner.activated_at.is_(None), literal(LearnerStatus.INVITED.value)),
        else_=literal(LearnerStatus.ACTIVE.value),
    )
    changed = (
        session.connection()
        .execute(
            update(Learner)
            .where(
                Learner.id == learner_id,
                Learner.school_id == actor.school_id,
                Learner.status == LearnerStatus.DEACTIVATED,
            )
            .values(
                status=never_activated,
                deactivated_at=None,
                updated_at=stamp,
            )
        )
        .rowcount
    )
    if changed:
        return Outcome.applied()
    status = _status(session, actor, learner_id)
    if status is None:
        return Outcome.skipped(Reason.NOT_FOUND)
    if status in GONE:
        return Outcome.skipped(Reason.ALREADY_DELETED)
    return Outcome.skipped(Reason.NOT_DEACTIVATED)

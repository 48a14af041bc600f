"""Finalizing deletions: from the delayed message, or from the reconciler when
that message was lost. Either way the learner is purged once."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.batches import now
from shared.erasure import finalize_deletion
from shared.models import AuditEntry, Learner, LearnerStatus
from shared.outcomes import Outcome

FINALIZE = "finalize_deletion"


def finalize_learner(sessions: sessionmaker[Session], school_id: int, learner_id: int) -> Outcome:
    with sessions() as session, session.begin():
        outcome = finalize_deletion(session, learner_id, school_id)
        if outcome.kind == "applied":
            session.execute(
                insert(AuditEntry).values(
                    school_id=school_id,
                    learner_id=learner_id,
                    action=FINALIZE,
                    outcome=outcome.kind,
                )
            )
    return outcome


def overdue_deletions(
    sessions: sessionmaker[Session], slack: timedelta, limit: int = 500
) -> list[tuple[int, int]]:
    """(school_id, learner_id) of learners whose purge is more than `slack` late."""
    with sessions() as session:
        return [
            (row.school_id, row.id)
            for row in session.execute(
                select(Learner.school_id, Learner.id)
                .where(
                    Learner.status == LearnerStatus.DELETING,
                    Learner.deletion_due_at < now() - slack,
                )
                .order_by(Learner.deletion_due_at)
                .limit(limit)
            )
        ]

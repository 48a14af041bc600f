"""Finalizing deletions: from the delayed message, or from the reconciler when
that message was lost. Either way the learner is purged once."""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import now
from shared.models import AuditEntry, Learner, LearnerStatus
from shared.outcomes import Outcome
from workers.erasure import FINALIZE, finalize_audited, finalize_deletion, purge_learners
from workers.statements import Connections, connections_for


def finalize_learner(sessions: sessionmaker[Session], school_id: int, learner_id: int) -> Outcome:
    """Purge one learner and write its audit row, in one transaction: on
    PostgreSQL one statement on the thread's own connection."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        return finalize_audited(_connections(bind), learner_id, school_id)
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


@cache
def _connections(engine: Engine) -> Connections:
    """The worker threads' own connections to the engine's database (looked
    up once per engine: reading a URL as libpq does costs more than a purge's
    round trip)."""
    return connections_for(engine.url.render_as_string(hide_password=False))


def finalize_overdue(sessions: sessionmaker[Session], slack: timedelta, limit: int = 2000) -> int:
    """Purge up to `limit` learners more than `slack` past due, set-based in
    one transaction: the purge of `workers.erasure.finalize_deletion` (same
    tables, same tombstone) a chunk at a time, because the reconciler takes
    over *every* deletion when finalize messages are lost, and one by one it
    managed ~150 a second. The learner rows are locked (SKIP LOCKED: one a
    finalize message holds right now is left to it, and several reconcilers
    share the work); a finalize message arriving later finds the learner
    `deleted` and skips. Returns how many were purged."""
    with sessions() as session, session.begin():
        query = (
            select(Learner.school_id, Learner.id)
            .where(
                Learner.status == LearnerStatus.DELETING,
                Learner.deletion_due_at < now() - slack,
            )
            .order_by(Learner.deletion_due_at)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = session.execute(query).all()
        if not rows:
            return 0
        ids = [row.id for row in rows]
        purge_learners(session, ids)
        session.execute(
            insert(AuditEntry),
            [
                {
                    "school_id": row.school_id,
                    "learner_id": row.id,
                    "action": FINALIZE,
                    "outcome": "applied",
                }
                for row in rows
            ],
        )
    return len(ids)

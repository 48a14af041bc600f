"""A batch that is running but that no dispatcher touches, and a second admin.

A parked batch's cursor is past every item (so they count as published) and
its last dispatch is in the future (so nothing republishes them as stale):
its items stay pending until a test decides otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from producer.tokens import issue_token
from shared.models import Batch, BatchItem, Learner
from tests.support.factories import make_learner


def park_batch(
    session: Session, school_id: int, admin_id: int, action: str, learner_ids: list[int], **params
) -> int:
    """A running batch of `admin_id`'s over `learner_ids`, all still pending."""
    batch = Batch(
        school_id=school_id,
        actor_id=admin_id,
        action=action,
        status="running",
        params=params,
        total=len(learner_ids),
        dispatch_cursor=2**62,
        dispatched_at=datetime.now(UTC) + timedelta(days=1),
    )
    session.add(batch)
    session.flush()
    session.execute(
        insert(BatchItem), [{"batch_id": batch.id, "learner_id": lid} for lid in learner_ids]
    )
    return batch.id


def make_admin(session: Session, school_id: int) -> tuple[int, str]:
    """Another active admin of the school, and an API token of theirs."""
    admin = make_learner(session, school_id)
    session.execute(update(Learner).where(Learner.id == admin.id).values(is_admin=True))
    return admin.id, issue_token(session, school_id, admin.id, label="second admin")

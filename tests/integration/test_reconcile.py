"""The reconciler makes lost messages late, never lost."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.models import Batch, BatchItem, Group, GroupMembership, Learner
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.actions import delete_learner
from tests.support.environment import sessions_for
from tests.support.factories import make_learner
from workers.reconcile import reconcile_once


@pytest.fixture
def reconciler(stack, database_url):
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    settings = Settings(
        database_url=database_url,
        broker_url=stack.vhost.url,
        signing_key=stack.env["SIGNING_KEY"],
        stale_after_seconds=1,
        deletion_overdue_seconds=0,
        dispatch_window=200,
    )
    sessions = sessions_for(database_url)
    yield lambda: reconcile_once(sessions, publisher, settings)
    publisher.close()
    broker.close()


def test_a_deletion_whose_finalize_message_was_lost_is_purged_by_the_reconciler(
    session, school, reconciler
):
    learner = make_learner(session, school.school_id)
    email = learner.email
    actor = Actor(school.school_id, school.admin_id)
    # Deleted with no finalize message ever sent: as if it was lost.
    assert delete_learner(session, actor, learner.id, grace_seconds=0).kind == "applied"
    session.commit()

    result = reconciler()

    session.expire_all()
    row = session.get(Learner, learner.id)
    assert result.finalized >= 1
    assert (row.status, row.email, row.name) == ("deleted", None, None)
    assert session.scalar(select(func.count()).where(Learner.email == email)) == 0


def test_items_whose_messages_were_lost_are_republished_and_finish(stack, session, reconciler):
    seeded = seed_school(session, learners=300, groups=1, courses=1, name="Lost Messages")
    group_id = session.scalar(select(Group.id).where(Group.school_id == seeded.school_id))
    request = BatchRequest.model_validate(
        {
            "action": "add_to_group",
            "params": {"group_ids": [group_id]},
            "selection": {"filter": {"status": ["active", "invited"]}},
        }
    )
    batch = submit(session, Actor(seeded.school_id, seeded.admin_id), request).batch
    # As if a producer published every item and died, and the broker lost them all.
    last = session.scalar(
        select(func.max(BatchItem.learner_id)).where(BatchItem.batch_id == batch.id)
    )
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(dispatch_cursor=last, dispatched_at=batch.created_at - timedelta(minutes=5))
    )
    session.commit()

    reconciler()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        session.expire_all()
        if session.scalar(select(Batch.status).where(Batch.id == batch.id)) == "completed":
            break
        time.sleep(0.3)
    # Whichever republished first (this pass or the running producer's own
    # loop, which reconciles stale batches too), every lost item finished.
    assert session.scalar(select(Batch.status).where(Batch.id == batch.id)) == "completed"
    members = session.scalar(select(func.count()).where(GroupMembership.group_id == group_id))
    assert members == 301

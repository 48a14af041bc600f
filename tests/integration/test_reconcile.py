"""The reconciler makes lost messages late, never lost."""

from __future__ import annotations

import time
from datetime import timedelta

import dramatiq
import pytest
from sqlalchemy import func, select, update

from batchctl.seed import seed_school
from producer.schemas import BatchRequest
from producer.submit import submit
from shared.actions import Actor
from shared.broker import build_broker
from shared.db import now
from shared.models import AuditEntry, Batch, BatchItem, Group, GroupMembership, Learner
from shared.publish import ConfirmedPublisher
from shared.settings import Settings
from tests.support.actions import delete_learner
from tests.support.environment import sessions_for
from tests.support.factories import make_learner
from tests.support.services import free_port, wait_until
from workers.deletion import claim_due, finalize_message
from workers.reconcile import reconcile_once

DAY = timedelta(days=1)


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


def deleted_now(session, school, count: int = 1) -> list[int]:
    """Learners deleted with no grace period: due at once, no message out."""
    actor = Actor(school.school_id, school.admin_id)
    ids = [make_learner(session, school.school_id).id for _ in range(count)]
    for learner_id in ids:
        assert delete_learner(session, actor, learner_id, grace_seconds=0).kind == "applied"
    session.commit()
    return ids


def purged(session, ids: list[int]) -> bool:
    session.expire_all()
    rows = session.execute(select(Learner.status, Learner.email).where(Learner.id.in_(ids)))
    return sorted(map(tuple, rows)) == [("deleted", None)] * len(ids)


def purges_audited(session, ids: list[int]) -> int:
    return session.scalar(
        select(func.count()).where(
            AuditEntry.learner_id.in_(ids), AuditEntry.action == "finalize_deletion"
        )
    )


def test_due_deletions_go_out_as_chunk_messages_and_the_workers_purge_them_once(
    session, school, reconciler
):
    ids = deleted_now(session, school, 3)

    result = reconciler()

    assert result.deletions_published >= 3
    wait_until(lambda: purged(session, ids), 30, "the chunk purged", every=0.2)
    # The lease is 0 s here: a pass may have published them again meanwhile.
    reconciler()
    assert purges_audited(session, ids) == 3


def test_a_deletion_still_pending_after_its_lease_is_purged_by_the_reconciler(
    session, school, reconciler
):
    lost, out = deleted_now(session, school, 2)
    # Both were claimed: the message of one was lost a while ago, the other's is still out.
    session.execute(
        update(Learner).where(Learner.id == lost).values(deletion_leased_until=now() - DAY)
    )
    session.execute(
        update(Learner).where(Learner.id == out).values(deletion_leased_until=now() + DAY)
    )
    session.commit()

    result = reconciler()

    assert result.finalized >= 1
    assert purged(session, [lost])
    assert not purged(session, [out])
    assert purges_audited(session, [lost, out]) == 1


def test_with_the_broker_unreachable_the_reconciler_purges_due_deletions_itself(
    session, school, database_url
):
    ids = deleted_now(session, school, 2)
    nowhere = Settings(
        broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", signing_key="k" * 32
    )
    publisher = ConfirmedPublisher(build_broker(nowhere))
    sessions = sessions_for(database_url)

    # Until none is due: other tests' deletions may be due too, and come first.
    while (claimed := claim_due(sessions, publisher, timedelta(seconds=30))).purged:
        assert claimed.published == 0

    assert purged(session, ids)
    assert purges_audited(session, ids) == 2


def test_finalize_messages_purge_their_schools_deleting_learners_old_shape_too(
    stack, session, school
):
    mine, old_shape = deleted_now(session, school, 2)
    other = seed_school(session, learners=1, groups=1, courses=1, name="Other School")
    session.commit()
    theirs = deleted_now(session, other)
    broker = stack.broker()
    publisher = ConfirmedPublisher(broker)
    try:
        publisher.publish(
            [
                # Another school's learner in this school's chunk is left alone.
                finalize_message(school.school_id, [mine, *theirs]),
                # One learner per message, as published before chunks.
                dramatiq.Message(
                    queue_name="finalize_deletion",
                    actor_name="finalize_deletion",
                    args=(school.school_id, old_shape),
                    kwargs={},
                    options={},
                ),
            ]
        )
    finally:
        publisher.close()
        broker.close()

    wait_until(lambda: purged(session, [mine, old_shape]), 30, "both purged", every=0.2)
    assert not purged(session, theirs)
    assert session.scalar(select(Learner.status).where(Learner.id.in_(theirs))) == "deleting"
    assert purges_audited(session, [mine, old_shape, *theirs]) == 2


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

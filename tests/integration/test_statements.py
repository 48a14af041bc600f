"""The one-statement hot path (`workers.statements`) starts nothing for a
batch that is not running. Its equivalence with the other paths is in
tests/integration/test_rules.py."""

from __future__ import annotations

from sqlalchemy import func, insert, select

from shared.models import Batch, BatchItem, GroupMembership
from shared.runtime import current
from tests.support.factories import make_group, make_learner
from workers.items import Items


def test_a_batch_that_is_not_running_changes_nothing(session, school):
    group_id, _, _ = make_group(session, school.school_id)
    learner = make_learner(session, school.school_id, status="active")
    batch = Batch(
        school_id=school.school_id,
        actor_id=school.admin_id,
        action="add_to_group",
        status="cancelling",
        params={"group_ids": [group_id]},
        total=1,
    )
    session.add(batch)
    session.flush()
    session.execute(insert(BatchItem), [{"batch_id": batch.id, "learner_id": learner.id}])
    session.commit()

    assert Items(current()).process(batch.id, learner.id) is None
    session.rollback()
    assert session.scalar(select(BatchItem.outcome).where(BatchItem.batch_id == batch.id)) == (
        "pending"
    )
    assert (
        session.scalar(
            select(func.count()).where(
                GroupMembership.learner_id == learner.id, GroupMembership.group_id == group_id
            )
        )
        == 0
    )

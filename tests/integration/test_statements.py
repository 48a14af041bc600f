"""The one-statement hot path (`workers.statements`, PostgreSQL) against the
domain functions of `shared.actions`: for every kind of learner, the same
outcome and reason and the same effect; and one effect per item."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from batchctl.seed import seed_school
from shared.actions import (
    Actor,
    add_to_course,
    add_to_group,
    deactivate_learner,
    delete_learner,
    resend_invitation,
)
from shared.models import (
    AuditEntry,
    Batch,
    BatchItem,
    CourseEnrollment,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSession,
    SharedLink,
)
from tests.support.factories import make_group, make_learner
from workers import items

MISSING_ID = 9_000_000_000
KINDS = ["invited", "active", "deactivated", "deleting", "deleted", "member", "foreign", "missing"]
DOMAIN = {
    "resend_invitation": lambda s, a, lid, b, p: resend_invitation(s, a, lid, b),
    "add_to_group": lambda s, a, lid, b, p: add_to_group(s, a, lid, p["group_ids"]),
    "add_to_course": lambda s, a, lid, b, p: add_to_course(s, a, lid, p["course_ids"]),
    "deactivate_learner": lambda s, a, lid, b, p: deactivate_learner(s, a, lid),
    "delete_learner": lambda s, a, lid, b, p: delete_learner(s, a, lid, grace_seconds=60),
}


@pytest.fixture
def foreign_school(session):
    seeded = seed_school(session, learners=2, groups=1, courses=1, name="Foreign School")
    session.commit()
    return seeded


def effects(session, learner_id: int, batch_id: int, params: dict) -> tuple:
    """What an action can change about a learner, timestamps aside."""

    def count(model, *where):
        return session.scalar(select(func.count()).select_from(model).where(*where))

    return (
        session.scalar(select(Learner.status).where(Learner.id == learner_id)),
        count(
            GroupMembership,
            GroupMembership.learner_id == learner_id,
            GroupMembership.group_id.in_(params["group_ids"]),
        ),
        count(
            CourseEnrollment,
            CourseEnrollment.learner_id == learner_id,
            CourseEnrollment.course_id.in_(params["course_ids"]),
        ),
        count(Invitation, Invitation.learner_id == learner_id, Invitation.batch_id == batch_id),
        count(LearnerSession, LearnerSession.learner_id == learner_id),
        count(SharedLink, SharedLink.learner_id == learner_id, SharedLink.revoked_at.is_(None)),
    )


def learners_of_every_kind(session, school, foreign, params, batch_ids) -> dict[str, int]:
    made = {}
    for kind in KINDS:
        if kind == "missing":
            made[kind] = MISSING_ID
            continue
        status = {"member": "invited", "foreign": "active"}.get(kind, kind)
        owner = foreign.school_id if kind == "foreign" else school.school_id
        made[kind] = make_learner(session, owner, status=status).id
    member = made["member"]
    session.execute(
        insert(GroupMembership), [{"learner_id": member, "group_id": params["group_ids"][0]}]
    )
    session.execute(
        insert(CourseEnrollment),
        [{"learner_id": member, "course_id": c} for c in params["course_ids"]],
    )
    session.execute(
        insert(Invitation),
        [
            {
                "school_id": school.school_id,
                "learner_id": member,
                "batch_id": batch_id,
                "token_hash": uuid.uuid4().hex,
            }
            for batch_id in batch_ids
        ],
    )
    made["self"] = school.admin_id
    return made


def test_one_statement_matches_the_domain_functions(session, school, foreign_school):
    actor = Actor(school.school_id, school.admin_id)
    group_id, course_ids, _ = make_group(session, school.school_id)
    params = {"group_ids": [group_id], "course_ids": sorted(course_ids)}
    batches = {}
    for action in DOMAIN:
        batch = Batch(
            school_id=school.school_id,
            actor_id=school.admin_id,
            action=action,
            status="running",
            params={
                "add_to_group": {"group_ids": params["group_ids"]},
                "add_to_course": {"course_ids": params["course_ids"]},
            }.get(action, {}),
            total=len(KINDS) + 1,
            # Parked: the session's running producer (the `stack` fixture shares
            # this database) must not dispatch these items before we do.
            dispatch_cursor=2**62,
            dispatched_at=datetime.now(UTC) + timedelta(days=1),
        )
        session.add(batch)
        session.flush()
        batches[action] = batch.id
    learners = {
        action: learners_of_every_kind(
            session, school, foreign_school, params, list(batches.values())
        )
        for action in DOMAIN
    }
    for action, batch_id in batches.items():
        session.execute(
            insert(BatchItem),
            [{"batch_id": batch_id, "learner_id": lid} for lid in learners[action].values()],
        )
    session.commit()

    for action, batch_id in batches.items():
        expected = {}
        for kind, lid in learners[action].items():
            savepoint = session.begin_nested()
            outcome = DOMAIN[action](session, actor, lid, batch_id, params)
            expected[kind] = (outcome.kind, outcome.reason, effects(session, lid, batch_id, params))
            savepoint.rollback()
        session.commit()

        assert items._one_statement(batch_id) is not None, "the one-statement path is in use"
        got = {}
        for kind, lid in learners[action].items():
            outcome = items.process_item(batch_id, lid)
            session.rollback()
            got[kind] = (outcome.kind, outcome.reason, effects(session, lid, batch_id, params))
        assert got == expected, action

        # Exactly once: a second delivery does nothing, and each item has one audit row.
        assert all(items.process_item(batch_id, lid) is None for lid in learners[action].values())
        session.rollback()
        audited = session.scalar(select(func.count()).where(AuditEntry.batch_id == batch_id))
        assert audited == len(learners[action])
        attempts = session.scalars(select(BatchItem.attempts).where(BatchItem.batch_id == batch_id))
        assert set(attempts) == {1}


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

    assert items.process_item(batch.id, learner.id) is None
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

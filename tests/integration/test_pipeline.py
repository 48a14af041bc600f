"""Each action end to end: HTTP in, RabbitMQ, worker processes, PostgreSQL out."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from batchctl.seed import seed_school
from shared.models import (
    AuditEntry,
    BatchItem,
    Course,
    CourseEnrollment,
    Group,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSettings,
)
from tests.support.factories import learner_ids
from tests.support.services import wait_until

LEARNERS = 2000


@pytest.fixture
def big_school(session):
    seeded = seed_school(session, learners=LEARNERS, groups=3, courses=4, name="E2E School")
    session.commit()
    return seeded


def outcomes(session, batch_id) -> dict[int, tuple[str, str | None]]:
    rows = session.execute(
        select(BatchItem.learner_id, BatchItem.outcome, BatchItem.reason).where(
            BatchItem.batch_id == batch_id
        )
    )
    return {lid: (outcome, reason) for lid, outcome, reason in rows}


def test_add_to_group_end_to_end(stack, session, big_school):
    group_id = session.scalar(select(Group.id).where(Group.school_id == big_school.school_id))
    members_before = set(
        session.scalars(
            select(GroupMembership.learner_id).where(GroupMembership.group_id == group_id)
        )
    )
    with stack.client(big_school.token) as client:
        batch = client.submit(
            "add_to_group", {"filter": {"status": ["active", "invited"]}}, {"group_ids": [group_id]}
        )
        final = client.wait(batch["id"], timeout=120)
        failed = list(client.items(batch["id"], outcome="failed"))
    # Every message is acked once its learner is done (workers/acks.py): RabbitMQ
    # holds none of them, ready or unacknowledged, to deliver again.
    wait_until(
        lambda: stack.vhost.queue_depths().get("add_to_group", 0) == 0,
        15,
        "every add_to_group message acked",
        every=0.5,
    )

    selected = set(learner_ids(session, big_school.school_id)) | {big_school.admin_id}
    assert final["status"] == "completed"
    assert final["total"] == len(selected)
    assert final["counts"]["applied"] == len(selected - members_before)
    assert final["counts"]["reasons"] == {"already_member": len(members_before & selected)}
    assert failed == []
    members = set(
        session.scalars(
            select(GroupMembership.learner_id).where(GroupMembership.group_id == group_id)
        )
    )
    assert selected <= members
    per_learner = outcomes(session, batch["id"])
    assert {
        lid for lid, (o, _) in per_learner.items() if o == "applied"
    } == selected - members_before
    audited = session.scalar(
        select(func.count()).where(
            AuditEntry.batch_id == batch["id"], AuditEntry.learner_id.is_not(None)
        )
    )
    assert audited == len(selected)


def test_add_to_course_end_to_end(stack, session, big_school):
    courses = list(
        session.scalars(select(Course.id).where(Course.school_id == big_school.school_id))
    )[:2]
    chosen = learner_ids(session, big_school.school_id)[:1500]
    with stack.client(big_school.token) as client:
        batch = client.submit("add_to_course", {"learner_ids": chosen}, {"course_ids": courses})
        final = client.wait(batch["id"], timeout=120)
    assert final["status"] == "completed"
    assert final["counts"]["applied"] + final["counts"]["skipped"] == len(chosen)
    enrolled = session.execute(
        select(CourseEnrollment.learner_id, func.count())
        .where(CourseEnrollment.course_id.in_(courses), CourseEnrollment.learner_id.in_(chosen))
        .group_by(CourseEnrollment.learner_id)
    ).all()
    assert len(enrolled) == len(chosen) and {n for _, n in enrolled} == {2}


def test_deactivate_end_to_end_skips_the_admin_and_keeps_settings(stack, session, big_school):
    chosen = learner_ids(session, big_school.school_id)[:1000] + [big_school.admin_id]
    settings_before = session.scalar(
        select(func.count()).where(LearnerSettings.learner_id.in_(chosen))
    )
    with stack.client(big_school.token) as client:
        batch = client.submit("deactivate_learner", {"learner_ids": chosen})
        final = client.wait(batch["id"], timeout=120)
    assert final["counts"]["applied"] == 1000
    assert final["counts"]["reasons"] == {"self": 1}
    statuses = dict(
        session.execute(
            select(Learner.status, func.count())
            .where(Learner.id.in_(chosen))
            .group_by(Learner.status)
        ).all()
    )
    assert statuses == {"deactivated": 1000, "active": 1}
    assert (
        session.scalar(select(func.count()).where(LearnerSettings.learner_id.in_(chosen)))
        == settings_before
    )


@pytest.mark.usefixtures("deletions_finalized")
def test_delete_end_to_end_purges_after_the_grace_period(stack, session, big_school):
    chosen = learner_ids(session, big_school.school_id)[:500]
    with stack.client(big_school.token) as client:
        batch = client.submit("delete_learner", {"learner_ids": chosen})
        final = client.wait(batch["id"], timeout=120)
    assert final["counts"]["applied"] == 500

    def deleted() -> int:
        session.rollback()
        return session.scalar(
            select(func.count()).where(Learner.id.in_(chosen), Learner.status == "deleted")
        )

    wait_until(lambda: deleted() == 500, 60, "500 deletions finalized", every=0.5)
    assert (
        session.scalar(
            select(func.count()).where(Learner.id.in_(chosen), Learner.email.is_not(None))
        )
        == 0
    )


def test_invitation_batch_sends_one_email_per_not_activated_learner(stack, session, big_school):
    chosen = learner_ids(session, big_school.school_id)[:1000]
    invited = set(learner_ids(session, big_school.school_id, status="invited")) & set(chosen)
    with stack.client(big_school.token) as client:
        batch = client.submit("resend_invitation", {"learner_ids": chosen})
        final = client.wait(batch["id"], timeout=120)
    assert final["counts"]["applied"] == len(invited)
    assert final["counts"]["reasons"] == {"already_active": len(chosen) - len(invited)}
    emails = dict(
        session.execute(select(Learner.id, Learner.email).where(Learner.id.in_(chosen))).all()
    )

    addresses = [emails[i] for i in invited]
    assert stack.smtp.inbox.received_by(addresses) == dict.fromkeys(addresses, 1)
    received = stack.smtp.inbox.recipients()
    assert all(received[emails[i]] == 0 for i in set(chosen) - invited)
    sent = session.scalar(
        select(func.count()).where(
            Invitation.batch_id == batch["id"], Invitation.sent_at.is_not(None)
        )
    )
    assert sent == len(invited)

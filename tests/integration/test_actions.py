"""The five actions on one learner, as the product page describes them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from batchctl.seed import seed_school
from producer.access import access
from producer.tokens import issue_token
from shared.actions import Actor
from shared.models import (
    ActivityEvent,
    ApiToken,
    AuditEntry,
    Course,
    CourseEnrollment,
    CourseProgress,
    Group,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSession,
    LearnerSettings,
    SharedLink,
)
from shared.outcomes import Outcome, Reason
from tests.support.actions import (
    add_to_course,
    add_to_group,
    deactivate_learner,
    delete_learner,
    reactivate_learner,
    resend_invitation,
)
from tests.support.factories import make_group, make_learner
from workers.erasure import purge_deleting

SKIP = Outcome.skipped
APPLIED = Outcome.applied()


@pytest.fixture
def actor(school) -> Actor:
    return Actor(school_id=school.school_id, admin_id=school.admin_id)


@pytest.fixture
def other_school(session):
    seeded = seed_school(session, learners=5, groups=1, courses=1, name="Other School")
    session.commit()
    return seeded


def count(session, model, **where) -> int:
    query = select(func.count()).select_from(model)
    for column, value in where.items():
        query = query.where(getattr(model, column) == value)
    return session.scalar(query)


def first_group(session, school_id) -> int:
    return session.scalar(select(Group.id).where(Group.school_id == school_id).limit(1))


def courses_of(session, school_id) -> list[int]:
    return list(session.scalars(select(Course.id).where(Course.school_id == school_id)))


# Resend invitation


def test_resend_invitation_queues_one_invitation_for_a_not_activated_learner(session, actor):
    learner = make_learner(session, actor.school_id, status="invited")
    assert resend_invitation(session, actor, learner.id, batch_id=None) == APPLIED
    assert count(session, Invitation, learner_id=learner.id) == 1


def test_resend_skips_activated_learners(session, actor):
    learner = make_learner(session, actor.school_id, status="active")
    assert resend_invitation(session, actor, learner.id) == SKIP(Reason.ALREADY_ACTIVE)
    assert count(session, Invitation, learner_id=learner.id) == 0


def test_resend_skips_deactivated_and_deleted_learners(session, actor):
    deactivated = make_learner(session, actor.school_id, status="deactivated")
    deleting = make_learner(session, actor.school_id, status="deleting")
    assert resend_invitation(session, actor, deactivated.id) == SKIP(Reason.ALREADY_DEACTIVATED)
    assert resend_invitation(session, actor, deleting.id) == SKIP(Reason.ALREADY_DELETED)


def test_a_learner_invited_within_the_cooldown_is_skipped_by_any_batch(session, actor):
    from shared.models import Batch

    def batch() -> int:
        made = Batch(school_id=actor.school_id, actor_id=actor.admin_id, action="resend_invitation")
        session.add(made)
        session.flush()
        return made.id

    learner = make_learner(session, actor.school_id, status="invited")
    assert resend_invitation(session, actor, learner.id, batch()) == APPLIED
    assert resend_invitation(session, actor, learner.id, batch()) == SKIP(Reason.RECENTLY_INVITED)
    assert count(session, Invitation, learner_id=learner.id) == 1
    # A cooldown of 0 is off.
    assert resend_invitation(session, actor, learner.id, batch(), cooldown_seconds=0) == APPLIED
    assert count(session, Invitation, learner_id=learner.id) == 2


# Add to group / course


def test_add_to_group_grants_the_groups_courses_and_paths(session, actor):
    learner = make_learner(session, actor.school_id, with_footprint=False)
    group_id, course_ids, path_ids = make_group(session, actor.school_id)
    assert access(session, actor.school_id, learner.id).empty

    assert add_to_group(session, actor, learner.id, [group_id]) == APPLIED

    granted = access(session, actor.school_id, learner.id)
    assert course_ids <= granted.course_ids
    assert path_ids <= granted.learning_path_ids


def test_add_to_several_groups_and_again_reports_already_member(session, actor):
    learner = make_learner(session, actor.school_id)
    first, _, _ = make_group(session, actor.school_id)
    second, _, _ = make_group(session, actor.school_id)
    assert add_to_group(session, actor, learner.id, [first, second]) == APPLIED
    assert count(session, GroupMembership, learner_id=learner.id) == 2
    assert add_to_group(session, actor, learner.id, [first, second]) == SKIP(Reason.ALREADY_MEMBER)
    assert count(session, GroupMembership, learner_id=learner.id) == 2


def test_add_to_group_ignores_a_group_of_another_school(session, actor, other_school):
    learner = make_learner(session, actor.school_id)
    foreign_group = first_group(session, other_school.school_id)
    outcome = add_to_group(session, actor, learner.id, [foreign_group])
    assert outcome.kind == "skipped"
    assert count(session, GroupMembership, learner_id=learner.id) == 0


def test_add_to_course_enrolls_in_each_course(session, actor):
    learner = make_learner(session, actor.school_id, with_footprint=False)
    courses = courses_of(session, actor.school_id)[:3]
    assert add_to_course(session, actor, learner.id, courses) == APPLIED
    assert set(courses) <= access(session, actor.school_id, learner.id).course_ids
    assert add_to_course(session, actor, learner.id, courses) == SKIP(Reason.ALREADY_ENROLLED)
    assert count(session, CourseEnrollment, learner_id=learner.id) == 3


def test_add_to_course_partly_enrolled_applies_the_missing_ones(session, actor):
    learner = make_learner(session, actor.school_id)
    courses = courses_of(session, actor.school_id)[:2]
    add_to_course(session, actor, learner.id, courses[:1])
    assert add_to_course(session, actor, learner.id, courses) == APPLIED
    assert count(session, CourseEnrollment, learner_id=learner.id) == 2


def test_add_to_group_or_course_skips_a_learner_being_deleted(session, actor):
    learner = make_learner(session, actor.school_id, status="deleting")
    group_id = first_group(session, actor.school_id)
    course_id = courses_of(session, actor.school_id)[0]
    assert add_to_group(session, actor, learner.id, [group_id]) == SKIP(Reason.ALREADY_DELETED)
    assert add_to_course(session, actor, learner.id, [course_id]) == SKIP(Reason.ALREADY_DELETED)


# Deactivate


def test_deactivation_revokes_access_but_keeps_analytics_and_settings(session, actor):
    learner = make_learner(session, actor.school_id)
    group_id, _, _ = make_group(session, actor.school_id)
    add_to_group(session, actor, learner.id, [group_id])
    issue_token(session, actor.school_id, learner.id)
    assert not access(session, actor.school_id, learner.id).empty

    assert deactivate_learner(session, actor, learner.id) == APPLIED

    assert access(session, actor.school_id, learner.id).empty
    assert session.scalar(select(Learner.status).where(Learner.id == learner.id)) == "deactivated"
    assert count(session, LearnerSession, learner_id=learner.id) == 0
    assert (
        session.scalar(
            select(func.count()).where(
                SharedLink.learner_id == learner.id, SharedLink.revoked_at.is_(None)
            )
        )
        == 0
    )
    assert (
        session.scalar(
            select(func.count()).where(
                ApiToken.learner_id == learner.id, ApiToken.revoked_at.is_(None)
            )
        )
        == 0
    )
    assert count(session, LearnerSettings, learner_id=learner.id) == 1
    assert count(session, CourseProgress, learner_id=learner.id) == 1
    assert count(session, ActivityEvent, learner_id=learner.id) == 1
    assert count(session, GroupMembership, learner_id=learner.id) == 1


def test_deactivating_twice_reports_already_deactivated(session, actor):
    learner = make_learner(session, actor.school_id)
    deactivate_learner(session, actor, learner.id)
    assert deactivate_learner(session, actor, learner.id) == SKIP(Reason.ALREADY_DEACTIVATED)


def test_admin_cannot_deactivate_own_account(session, actor):
    assert deactivate_learner(session, actor, actor.admin_id) == SKIP(Reason.SELF)
    assert session.scalar(select(Learner.status).where(Learner.id == actor.admin_id)) == "active"


def test_reactivate_undoes_deactivate(session, actor):
    learner = make_learner(session, actor.school_id, with_footprint=False)
    invited = make_learner(session, actor.school_id, status="invited", with_footprint=False)
    group_id, course_ids, _ = make_group(session, actor.school_id)
    add_to_group(session, actor, learner.id, [group_id])
    deactivate_learner(session, actor, learner.id)
    deactivate_learner(session, actor, invited.id)

    assert reactivate_learner(session, actor, learner.id) == APPLIED
    assert reactivate_learner(session, actor, invited.id) == APPLIED
    assert reactivate_learner(session, actor, learner.id) == SKIP(Reason.NOT_DEACTIVATED)
    statuses = dict(
        session.execute(
            select(Learner.id, Learner.status).where(Learner.id.in_([learner.id, invited.id]))
        ).all()
    )
    assert statuses == {learner.id: "active", invited.id: "invited"}
    assert course_ids <= access(session, actor.school_id, learner.id).course_ids


# Delete and finalize


def test_delete_revokes_access_at_once_and_shows_as_deactivated(session, actor):
    learner = make_learner(session, actor.school_id)
    group_id, _, _ = make_group(session, actor.school_id)
    add_to_group(session, actor, learner.id, [group_id])

    assert delete_learner(session, actor, learner.id, grace_seconds=60) == APPLIED

    row = session.execute(select(Learner).where(Learner.id == learner.id)).scalar_one()
    session.refresh(row)
    assert row.status == "deleting"
    assert row.deletion_due_at is not None and row.deactivated_at is not None
    assert access(session, actor.school_id, learner.id).empty
    assert count(session, LearnerSession, learner_id=learner.id) == 0


def test_admin_cannot_delete_own_account(session, actor):
    assert delete_learner(session, actor, actor.admin_id) == SKIP(Reason.SELF)
    assert session.scalar(select(Learner.status).where(Learner.id == actor.admin_id)) == "active"


def test_deleting_twice_reports_already_deleted(session, actor):
    learner = make_learner(session, actor.school_id)
    delete_learner(session, actor, learner.id)
    assert delete_learner(session, actor, learner.id) == SKIP(Reason.ALREADY_DELETED)
    purge_deleting(session, actor.school_id, [learner.id])
    assert delete_learner(session, actor, learner.id) == SKIP(Reason.ALREADY_DELETED)
    assert deactivate_learner(session, actor, learner.id) == SKIP(Reason.ALREADY_DELETED)


def test_a_deactivated_learner_can_be_deleted(session, actor):
    learner = make_learner(session, actor.school_id)
    deactivate_learner(session, actor, learner.id)
    assert delete_learner(session, actor, learner.id) == APPLIED


def test_finalize_deletion_only_purges_learners_being_deleted(session, actor):
    learner = make_learner(session, actor.school_id)
    assert purge_deleting(session, actor.school_id, [learner.id]) == 0
    assert session.scalar(select(Learner.email).where(Learner.id == learner.id)) is not None


def test_finalize_deletion_purges_a_learner_once(session, actor):
    learner = make_learner(session, actor.school_id)
    delete_learner(session, actor, learner.id)
    assert purge_deleting(session, actor.school_id, [learner.id, 10**12]) == 1
    assert purge_deleting(session, actor.school_id, [learner.id]) == 0
    purges = select(func.count()).where(
        AuditEntry.learner_id == learner.id, AuditEntry.action == "finalize_deletion"
    )
    assert session.scalar(purges) == 1


# Tenant isolation


@pytest.mark.parametrize(
    "apply",
    [
        lambda s, a, lid, sch: resend_invitation(s, a, lid),
        lambda s, a, lid, sch: add_to_group(s, a, lid, [first_group(s, sch.school_id)]),
        lambda s, a, lid, sch: add_to_course(s, a, lid, courses_of(s, sch.school_id)[:1]),
        lambda s, a, lid, sch: deactivate_learner(s, a, lid),
        lambda s, a, lid, sch: delete_learner(s, a, lid),
        lambda s, a, lid, sch: reactivate_learner(s, a, lid),
    ],
    ids=["resend", "group", "course", "deactivate", "delete", "reactivate"],
)
def test_a_learner_of_another_school_is_not_found_and_untouched(
    session, actor, school, other_school, apply
):
    stranger = make_learner(session, other_school.school_id, status="invited")
    before = session.execute(select(Learner.__table__).where(Learner.id == stranger.id)).one()

    assert apply(session, actor, stranger.id, school) == SKIP(Reason.NOT_FOUND)

    after = session.execute(select(Learner.__table__).where(Learner.id == stranger.id)).one()
    assert after == before
    assert count(session, GroupMembership, learner_id=stranger.id) == 0
    assert count(session, CourseEnrollment, learner_id=stranger.id) == 0
    assert count(session, Invitation, learner_id=stranger.id) == 0
    assert count(session, LearnerSession, learner_id=stranger.id) == 1


def test_a_purge_leaves_a_deleting_learner_of_another_school_alone(session, actor, other_school):
    stranger = make_learner(session, other_school.school_id)
    theirs = Actor(school_id=other_school.school_id, admin_id=other_school.admin_id)
    assert delete_learner(session, theirs, stranger.id) == APPLIED
    mine = make_learner(session, actor.school_id)
    assert delete_learner(session, actor, mine.id) == APPLIED

    assert purge_deleting(session, actor.school_id, [mine.id, stranger.id]) == 1

    row = session.execute(select(Learner.status, Learner.email).where(Learner.id == stranger.id))
    assert row.one() == ("deleting", stranger.email)


def test_an_unknown_learner_id_is_not_found(session, actor):
    assert deactivate_learner(session, actor, 10**12) == SKIP(Reason.NOT_FOUND)
    assert add_to_group(session, actor, 10**12, [first_group(session, actor.school_id)]) == SKIP(
        Reason.NOT_FOUND
    )

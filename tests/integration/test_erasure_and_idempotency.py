"""Complete erasure after finalize deletion, and every action applied twice."""

from __future__ import annotations

import pytest
from sqlalchemy import JSON, String, Text, cast, func, insert, or_, select

from producer.access import access
from producer.tokens import issue_token
from shared.actions import Actor
from shared.models import Base, Batch, Course, Invitation, Learner, LearningPathEnrollment
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


@pytest.fixture
def actor(school) -> Actor:
    return Actor(school_id=school.school_id, admin_id=school.admin_id)


def tables_mentioning(session, *needles: str) -> dict[str, int]:
    """Every table of the metadata whose text-like columns contain any needle."""
    found = {}
    for table in Base.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
        if not columns:
            continue
        matches = or_(*(cast(c, Text).contains(needle) for c in columns for needle in needles))
        hits = session.scalar(select(func.count()).select_from(table).where(matches))
        if hits:
            found[table.name] = hits
    return found


def test_after_finalize_deletion_no_table_holds_the_learners_email_or_name(session, actor):
    learner = make_learner(session, actor.school_id, status="invited")
    email, name = learner.email, learner.name
    group_id, _, path_ids = make_group(session, actor.school_id)
    add_to_group(session, actor, learner.id, [group_id])
    course_id = session.scalar(select(Course.id).where(Course.school_id == actor.school_id))
    add_to_course(session, actor, learner.id, [course_id])
    session.execute(
        insert(LearningPathEnrollment).values(learner_id=learner.id, learning_path_id=min(path_ids))
    )
    resend_invitation(session, actor, learner.id)
    issue_token(session, actor.school_id, learner.id, label=f"token of {email}")
    assert "learners" in tables_mentioning(session, email, name)
    assert "api_tokens" in tables_mentioning(session, email, name)

    assert delete_learner(session, actor, learner.id).kind == "applied"
    assert purge_deleting(session, actor.school_id, [learner.id]) == 1

    assert tables_mentioning(session, email, name) == {}
    tombstone = session.execute(
        select(Learner.school_id, Learner.status, Learner.email, Learner.name).where(
            Learner.id == learner.id
        )
    ).one()
    assert tuple(tombstone) == (actor.school_id, "deleted", None, None)
    for table in Base.metadata.sorted_tables:
        if "learner_id" in table.c and table.name not in {"batch_items", "audit_log"}:
            left = session.scalar(
                select(func.count()).select_from(table).where(table.c.learner_id == learner.id)
            )
            assert left == 0, f"{table.name} still has rows of the deleted learner"


def test_access_is_empty_at_deactivate_and_at_delete_shared_links_included(session, actor):
    for act in (deactivate_learner, delete_learner):
        learner = make_learner(session, actor.school_id)
        before = access(session, actor.school_id, learner.id)
        assert before.course_ids, "the SSO shared link should give access to a course"
        act(session, actor, learner.id)
        assert access(session, actor.school_id, learner.id).empty


def snapshot(session, learner_id: int) -> dict[str, list[tuple]]:
    """Every row about the learner in every table, to compare states."""
    state = {}
    for table in Base.metadata.sorted_tables:
        if table.name == "learners":
            where = table.c.id == learner_id
        elif "learner_id" in table.c:
            where = table.c.learner_id == learner_id
        else:
            continue
        rows = session.execute(select(table).where(where)).all()
        state[table.name] = sorted(map(tuple, rows), key=repr)
    return state


def finalize(session, actor: Actor, learner_id: int) -> Outcome:
    """A purge as an outcome: applied, or skipped with nothing left to purge."""
    if purge_deleting(session, actor.school_id, [learner_id]):
        return Outcome.applied()
    return Outcome.skipped(Reason.ALREADY_DELETED)


ACTIONS = {
    "resend_invitation": lambda s, a, lid, ctx: resend_invitation(s, a, lid, ctx["batch"]),
    "add_to_group": lambda s, a, lid, ctx: add_to_group(s, a, lid, [ctx["group"]]),
    "add_to_course": lambda s, a, lid, ctx: add_to_course(s, a, lid, ctx["courses"]),
    "deactivate_learner": lambda s, a, lid, ctx: deactivate_learner(s, a, lid),
    "delete_learner": lambda s, a, lid, ctx: delete_learner(s, a, lid),
    "reactivate_learner": lambda s, a, lid, ctx: reactivate_learner(s, a, lid),
    "finalize_deletion": lambda s, a, lid, ctx: finalize(s, a, lid),
}
PREPARE = {
    "reactivate_learner": deactivate_learner,
    "finalize_deletion": delete_learner,
}


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_applied_twice_leaves_the_same_state_as_once(session, actor, action):
    learner = make_learner(session, actor.school_id, status="invited")
    batch = Batch(school_id=actor.school_id, actor_id=actor.admin_id, action=action)
    session.add(batch)
    session.flush()
    group_id, course_ids, _ = make_group(session, actor.school_id)
    ctx = {"batch": batch.id, "group": group_id, "courses": sorted(course_ids)}
    if action in PREPARE:
        PREPARE[action](session, actor, learner.id)

    first = ACTIONS[action](session, actor, learner.id, ctx)
    once = snapshot(session, learner.id)
    second = ACTIONS[action](session, actor, learner.id, ctx)

    assert first.kind == "applied"
    assert second.kind == "skipped" and second.reason is not None
    assert snapshot(session, learner.id) == once
    if action == "resend_invitation":
        assert len(once[Invitation.__tablename__]) == 1

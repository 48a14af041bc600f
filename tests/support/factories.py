"""Small builders for rows the seeder does not make exactly as a test needs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from shared.models import (
    ActivityEvent,
    Course,
    CourseProgress,
    Group,
    GroupCourse,
    GroupLearningPath,
    Learner,
    LearnerSession,
    LearnerSettings,
    LearningPath,
    SharedLink,
)


def learner_ids(session: Session, school_id: int, status: str | None = None) -> list[int]:
    """The school's learners but its admin, in id order (optionally of one status)."""
    query = select(Learner.id).where(Learner.school_id == school_id, ~Learner.is_admin)
    if status:
        query = query.where(Learner.status == status)
    return list(session.scalars(query.order_by(Learner.id)))


def make_learner(
    session: Session, school_id: int, status: str = "active", with_footprint: bool = True
) -> Learner:
    """A learner with a unique email and name, and (by default) settings,
    analytics, a session and an SSO shared link, like a real learner has."""
    tag = uuid.uuid4().hex[:12]
    learner_id = session.scalar(
        insert(Learner)
        .values(
            school_id=school_id,
            email=f"zed.{tag}@mail.example.org",
            name=f"Zed Quorra {tag}",
            status=status,
            activated_at=None if status == "invited" else datetime.now(UTC),
        )
        .returning(Learner.id)
    )
    if with_footprint:
        course_id = session.scalar(select(Course.id).where(Course.school_id == school_id).limit(1))
        session.add_all(
            [
                LearnerSettings(learner_id=learner_id, locale="de", preferences={"tag": tag}),
                CourseProgress(learner_id=learner_id, course_id=course_id, percent_complete=42),
                ActivityEvent(learner_id=learner_id, course_id=course_id, kind="lesson_viewed"),
                LearnerSession(
                    learner_id=learner_id,
                    token_hash=uuid.uuid4().hex,
                    user_agent="pytest",
                    expires_at=_far_future(),
                ),
                SharedLink(
                    school_id=school_id,
                    learner_id=learner_id,
                    course_id=course_id,
                    token_hash=uuid.uuid4().hex,
                    via_sso=True,
                ),
            ]
        )
        session.flush()
    return session.get(Learner, learner_id)


def make_group(session: Session, school_id: int) -> tuple[int, set[int], set[int]]:
    """A group granting two new courses and one new learning path."""
    group = Group(school_id=school_id, name="Granting group")
    courses = [Course(school_id=school_id, title=f"Granted {i}") for i in range(2)]
    path = LearningPath(school_id=school_id, title="Granted path")
    session.add_all([group, *courses, path])
    session.flush()
    session.add_all(
        [GroupCourse(group_id=group.id, course_id=c.id) for c in courses]
        + [GroupLearningPath(group_id=group.id, learning_path_id=path.id)]
    )
    session.flush()
    return group.id, {c.id for c in courses}, {path.id}


def _far_future() -> datetime:
    return datetime.now(UTC) + timedelta(days=30)

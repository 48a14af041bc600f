"""What a learner can open right now.

Access comes from direct enrollments, group memberships (the groups' courses
and learning paths) and unrevoked shared links, SSO ones included. A learner
who is deactivated, being deleted or deleted has none, whatever rows remain:
the status check is what closes the product page's "deleted learners might
still have access via shared links" hole, even before links are revoked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from shared.models import (
    CourseEnrollment,
    GroupCourse,
    GroupLearningPath,
    GroupMembership,
    Learner,
    LearnerStatus,
    LearningPathEnrollment,
    SharedLink,
)

CAN_SIGN_IN = (LearnerStatus.INVITED, LearnerStatus.ACTIVE)


@dataclass(frozen=True)
class Access:
    course_ids: frozenset[int] = field(default_factory=frozenset)
    learning_path_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not self.course_ids and not self.learning_path_ids


def access(session: Session, school_id: int, learner_id: int) -> Access:
    status = session.connection().scalar(
        select(Learner.status).where(Learner.id == learner_id, Learner.school_id == school_id)
    )
    if status not in CAN_SIGN_IN:
        return Access()
    live_links = (
        select(SharedLink)
        .where(SharedLink.learner_id == learner_id, SharedLink.revoked_at.is_(None))
        .subquery()
    )
    courses = union(
        select(CourseEnrollment.course_id).where(CourseEnrollment.learner_id == learner_id),
        select(GroupCourse.course_id)
        .join(GroupMembership, GroupMembership.group_id == GroupCourse.group_id)
        .where(GroupMembership.learner_id == learner_id),
        select(live_links.c.course_id).where(live_links.c.course_id.is_not(None)),
    )
    paths = union(
        select(LearningPathEnrollment.learning_path_id).where(
            LearningPathEnrollment.learner_id == learner_id
        ),
        select(GroupLearningPath.learning_path_id)
        .join(GroupMembership, GroupMembership.group_id == GroupLearningPath.group_id)
        .where(GroupMembership.learner_id == learner_id),
        select(live_links.c.learning_path_id).where(live_links.c.learning_path_id.is_not(None)),
    )
    return Access(
        course_ids=frozenset(session.connection().scalars(courses)),
        learning_path_ids=frozenset(session.connection().scalars(paths)),
    )

"""Every path derived from `shared.rules`, run over a learner of every kind.

Used by tests/unit/test_rules.py (SQLite: the generic path against the dry
run) and tests/integration/test_rules.py (PostgreSQL: the generic path, the
single statement and the dry run). A path that disagrees with another on any
action and any kind of learner fails both.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from batchctl.seed import SeededSchool, seed_school
from producer.predict import predicted_reason
from shared.actions import Actor, apply_action
from shared.contract import Action
from shared.models import (
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

MISSING_ID = 9_000_000_000
# INVITE_COOLDOWN_SECONDS for every path (the workers' default setting).
COOLDOWN = 3600
KINDS = ["invited", "active", "deactivated", "deleting", "deleted", "member", "foreign", "missing"]
Result = tuple[str, str | None, tuple]


class Scene:
    """A school with one learner of every kind per action, and a parked batch
    per action holding them all as pending items."""

    def __init__(self, session: Session, school: SeededSchool) -> None:
        self.session = session
        self.actor = Actor(school.school_id, school.admin_id)
        foreign = seed_school(session, learners=2, groups=1, courses=1, name="Foreign School")
        group_id, course_ids, _ = make_group(session, school.school_id)
        self.params = {"group_ids": [group_id], "course_ids": sorted(course_ids)}
        self.batches = {action: self._batch(action) for action in Action}
        self.learners = {
            action: self._learners(school, foreign, list(self.batches.values()))
            for action in Action
        }
        for action, batch_id in self.batches.items():
            session.execute(
                insert(BatchItem),
                [
                    {"batch_id": batch_id, "learner_id": lid}
                    for lid in self.learners[action].values()
                ],
            )
        session.commit()

    def _batch(self, action: Action) -> int:
        name = action.param_name
        batch = Batch(
            school_id=self.actor.school_id,
            actor_id=self.actor.admin_id,
            action=action.value,
            status="running",
            params={name: self.params[name]} if name else {},
            total=len(KINDS) + 1,
            # Parked: a producer sharing this database must not dispatch these items.
            dispatch_cursor=2**62,
            dispatched_at=datetime.now(UTC) + timedelta(days=1),
        )
        self.session.add(batch)
        self.session.flush()
        return batch.id

    def _learners(
        self, school: SeededSchool, foreign: SeededSchool, batch_ids: list[int]
    ) -> dict[str, int]:
        session = self.session
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
            insert(GroupMembership),
            [{"learner_id": member, "group_id": self.params["group_ids"][0]}],
        )
        session.execute(
            insert(CourseEnrollment),
            [{"learner_id": member, "course_id": c} for c in self.params["course_ids"]],
        )
        # Invited by another batch a minute ago: inside the cooldown.
        session.execute(
            update(Learner)
            .where(Learner.id == member)
            .values(last_invited_at=datetime.now(UTC) - timedelta(minutes=1))
        )
        made["self"] = school.admin_id
        return made

    def effects(self, learner_id: int, batch_id: int) -> tuple:
        """What an action can change about a learner, timestamps aside."""
        session = self.session

        def count(model: Any, *where: Any) -> int:
            return session.scalar(select(func.count()).select_from(model).where(*where))

        return (
            session.scalar(select(Learner.status).where(Learner.id == learner_id)),
            count(
                GroupMembership,
                GroupMembership.learner_id == learner_id,
                GroupMembership.group_id.in_(self.params["group_ids"]),
            ),
            count(
                CourseEnrollment,
                CourseEnrollment.learner_id == learner_id,
                CourseEnrollment.course_id.in_(self.params["course_ids"]),
            ),
            count(Invitation, Invitation.learner_id == learner_id, Invitation.batch_id == batch_id),
            count(LearnerSession, LearnerSession.learner_id == learner_id),
            count(SharedLink, SharedLink.learner_id == learner_id, SharedLink.revoked_at.is_(None)),
        )

    def generic(self, action: Action) -> dict[str, Result]:
        """The generic path on each learner, each in a savepoint rolled back."""
        batch_id = self.batches[action]
        got = {}
        for kind, lid in self.learners[action].items():
            savepoint = self.session.begin_nested()
            outcome = apply_action(
                self.session,
                action,
                self.actor,
                lid,
                self.params,
                batch_id=batch_id,
                grace_seconds=60,
                invite_cooldown_seconds=COOLDOWN,
            )
            got[kind] = (str(outcome.kind), outcome.reason, self.effects(lid, batch_id))
            savepoint.rollback()
        self.session.commit()
        return got

    def through(self, action: Action, process: Callable[[int, int], Any]) -> dict[str, Result]:
        """Another path, `process(batch_id, learner_id) -> Outcome`, for real."""
        batch_id = self.batches[action]
        got = {}
        for kind, lid in self.learners[action].items():
            outcome = process(batch_id, lid)
            self.session.rollback()
            got[kind] = (str(outcome.kind), outcome.reason, self.effects(lid, batch_id))
        return got

    def predicted(self, action: Action) -> dict[str, str | None]:
        """The dry run's reason for each learner (None: would be applied)."""
        ids = list(self.learners[action].values())
        reason = predicted_reason(self.actor, action, self.params, COOLDOWN)
        rows = dict(
            self.session.execute(
                select(Learner.id, reason).where(
                    Learner.id.in_(ids), Learner.school_id == self.actor.school_id
                )
            ).all()
        )
        return {kind: rows.get(lid, "not_found") for kind, lid in self.learners[action].items()}


def reasons(results: dict[str, Result]) -> dict[str, str | None]:
    return {kind: reason for kind, (_, reason, _) in results.items()}

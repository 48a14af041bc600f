"""The actions by name for tests that read like the product page. Each is
`shared.actions.apply_action` (the generic path) with the action's params."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from shared.actions import Actor, apply_action
from shared.outcomes import Outcome


def resend_invitation(
    session: Session,
    actor: Actor,
    learner_id: int,
    batch_id: int | None = None,
    cooldown_seconds: float = 3600,
) -> Outcome:
    return apply_action(
        session,
        "resend_invitation",
        actor,
        learner_id,
        batch_id=batch_id,
        invite_cooldown_seconds=cooldown_seconds,
    )


def add_to_group(
    session: Session, actor: Actor, learner_id: int, group_ids: Sequence[int]
) -> Outcome:
    return apply_action(session, "add_to_group", actor, learner_id, {"group_ids": group_ids})


def add_to_course(
    session: Session, actor: Actor, learner_id: int, course_ids: Sequence[int]
) -> Outcome:
    return apply_action(session, "add_to_course", actor, learner_id, {"course_ids": course_ids})


def deactivate_learner(session: Session, actor: Actor, learner_id: int) -> Outcome:
    return apply_action(session, "deactivate_learner", actor, learner_id)


def reactivate_learner(session: Session, actor: Actor, learner_id: int) -> Outcome:
    return apply_action(session, "reactivate_learner", actor, learner_id)


def delete_learner(
    session: Session, actor: Actor, learner_id: int, grace_seconds: float = 0
) -> Outcome:
    return apply_action(session, "delete_learner", actor, learner_id, grace_seconds=grace_seconds)

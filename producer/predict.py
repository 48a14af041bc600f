"""The dry run: what a batch would do to each selected learner, changing nothing.

Derived from the action's rule (`shared.rules`), like the paths that apply it:
the rule's skip reasons become one SQL CASE over the people query, so a dry
run of a million learners is one grouped count in the database.
tests/integration/test_rules.py checks the prediction against real runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal_column, select
from sqlalchemy.orm import Session

from producer.schemas import LearnerIdsSelection
from producer.selection import (
    IdentifierSelection,
    chunks,
    id_table,
    identified_learners,
    identifiers,
    selected_learners,
)
from shared.actions import Actor, invited_since
from shared.batches import shape_counts
from shared.contract import Action
from shared.db import now
from shared.models import ItemOutcome, Learner
from shared.outcomes import Reason
from shared.rules import RULES


def predicted_reason(
    actor: Actor, action: Action, params: dict[str, Any], invite_cooldown_seconds: float = 0
) -> ColumnElement[Any]:
    """The reason each learner would be skipped, None where the action applies."""
    rule = RULES[action]
    is_self = Learner.id == (actor.admin_id or 0)
    whens: list[tuple[ColumnElement[bool], str]] = []
    if rule.refuses_self:
        whens.append((is_self, Reason.SELF.value))
    whens += [
        (Learner.status.in_(statuses), reason.value)
        for reason, statuses in rule.skip_reasons().items()
    ]
    if rule.already_done is not None:
        targets = params.get(action.param_name or "", [])
        recently_invited = invited_since(now(), invite_cooldown_seconds)
        whens.append(
            (rule.already_done(Learner.id, targets, recently_invited), rule.unchanged.value)
        )
    return case(*whens, else_=literal_column("NULL"))


def predict(
    session: Session,
    actor: Actor,
    action: Action,
    params: dict[str, Any],
    selection: Any,
    invite_cooldown_seconds: float = 0,
) -> dict[str, Any]:
    """Counts each outcome would have, computed without changing anything."""
    reason = predicted_reason(actor, action, params, invite_cooldown_seconds).label("reason")
    not_found = 0
    if isinstance(selection, LearnerIdsSelection):
        wanted = sorted(set(selection.learner_ids))
        ids = id_table(session, wanted)
        query = select(reason, func.count()).select_from(
            ids.join(Learner, and_(Learner.id == ids.c.id, Learner.school_id == actor.school_id))
        )
        rows = session.execute(query.group_by(reason)).all()
        not_found = len(wanted) - sum(n for _, n in rows)
    elif isinstance(selection, IdentifierSelection):
        rows = []
        for chunk in chunks(identifiers(selection)):
            learners = identified_learners(session, actor, selection, chunk).subquery()
            query = select(reason, func.count()).select_from(
                learners.join(Learner, Learner.id == learners.c.id)
            )
            rows += session.execute(query.group_by(reason)).all()
    else:
        learners = selected_learners(session, actor, selection).subquery()
        query = select(reason, func.count()).select_from(
            learners.join(Learner, Learner.id == learners.c.id)
        )
        rows = session.execute(query.group_by(reason)).all()
    shaped = [(ItemOutcome.SKIPPED if r else ItemOutcome.APPLIED, r, n) for r, n in rows]
    if not_found:
        shaped.append((ItemOutcome.SKIPPED, Reason.NOT_FOUND.value, not_found))
    counts = shape_counts(shaped)
    counts["total"] = sum(n for _, _, n in shaped)
    return counts

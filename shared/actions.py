"""The generic path: apply one action to one learner in the caller's transaction.

Derived from the action's `shared.rules.Rule`: the effect runs with the
rule's conditions bound to this learner, and only when it changes nothing is
the learner's status read to say why. No ORM objects are loaded. Every
statement carries the school, so a learner of another school is
indistinguishable from one that does not exist.

This path serves SQLite (the embedded mode) and the tests; on PostgreSQL the
workers run the same rules as one statement (`workers.statements`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, false, literal, select
from sqlalchemy.orm import Session

from shared.contract import Action
from shared.db import now
from shared.models import Learner
from shared.outcomes import Outcome, Reason
from shared.rules import RULES, Change


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, and in which school: fixed by the API token."""

    school_id: int
    admin_id: int | None


def new_token_hash() -> str:
    """The stored hash of a new invitation's secret (the link is signed from it)."""
    return hashlib.sha256(secrets.token_bytes(32)).hexdigest()


def apply_action(
    session: Session,
    action: Action | str,
    actor: Actor,
    learner_id: int,
    params: dict[str, Any] | None = None,
    *,
    batch_id: int | None = None,
    grace_seconds: float = 0,
    invite_cooldown_seconds: float = 0,
) -> Outcome:
    """Apply `action` to one learner; applying it twice reports a skip the second time."""
    action = Action(action)
    rule = RULES[action]
    if rule.refuses_self and learner_id == actor.admin_id:
        return Outcome.skipped(Reason.SELF)
    stamp = now()
    eligible = (Learner.school_id == actor.school_id) & Learner.status.in_(sorted(rule.applies_to))
    change = Change(
        learner_ids=select(Learner.id).where(Learner.id == learner_id, eligible),
        still_eligible=eligible,
        school_id=literal(actor.school_id),
        batch_id=literal(batch_id),
        targets=(params or {}).get(action.param_name or "", []),
        token_hash=literal(new_token_hash()),
        now=literal(stamp),
        deletion_due=literal(stamp + timedelta(seconds=grace_seconds)),
        recently_invited=invited_since(stamp, invite_cooldown_seconds),
        dialect=session.get_bind().dialect.name,
    )
    connection = session.connection()
    if connection.execute(rule.effect(change)).first() is None:
        status = connection.scalar(
            select(Learner.status).where(
                Learner.id == learner_id, Learner.school_id == actor.school_id
            )
        )
        return Outcome.skipped(rule.reason_for(status))
    if rule.then is not None:
        for statement in rule.then(select(literal(learner_id)), change):
            connection.execute(statement)
    return Outcome.applied()


def invited_since(stamp: datetime, cooldown_seconds: float) -> ColumnElement[bool]:
    """The learner was invited less than `cooldown_seconds` before `stamp`
    (never, with a cooldown of 0: it is off)."""
    if cooldown_seconds <= 0:
        return false()
    # IS NOT NULL first: the condition is negated, and NOT (NULL > t) is NULL.
    cutoff = stamp - timedelta(seconds=cooldown_seconds)
    return Learner.last_invited_at.is_not(None) & (Learner.last_invited_at > cutoff)

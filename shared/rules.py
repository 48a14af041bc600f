"""Each action's rules, declared once.

A `Rule` says which learner statuses an action changes, the skip reason for
every other status, and the effect as a SQLAlchemy statement. Every path that
applies or predicts an action is derived from it and from nothing else:

- the generic path, `shared.actions.apply_action` (SQLite, the embedded mode);
- the PostgreSQL single statement, `workers.statements` (one round trip per
  learner: claim, effect, outcome and audit row in one `WITH ...`);
- the dry run, `producer.predict` (one CASE over the people query).

Adding an action is one `Rule` below plus its name in `shared.contract`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Insert,
    Select,
    Table,
    Update,
    any_,
    case,
    delete,
    func,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.elements import BindParameter

from shared.batches import cancel_submitted_by
from shared.contract import Action
from shared.models import (
    ApiToken,
    Base,
    Course,
    CourseEnrollment,
    Group,
    GroupMembership,
    Invitation,
    Learner,
    LearnerSession,
    LearnerStatus,
    SharedLink,
)
from shared.outcomes import Reason

ALL_STATUSES = frozenset(LearnerStatus)
GONE = frozenset({LearnerStatus.DELETING, LearnerStatus.DELETED})
LIVE = frozenset({LearnerStatus.INVITED, LearnerStatus.ACTIVE})

Effect = Insert | Update | Delete
# A SQL expression, or a mapped attribute such as `Learner.id` used as one.
Expression = ColumnElement[Any] | QueryableAttribute[Any]


def _table(model: type[Base]) -> Table:
    """The model's Table (the declarative base types `__table__` as any FROM
    clause; every model here is mapped to a Table)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


@dataclass(frozen=True)
class Change:
    """What an effect is written against. The generic path binds these to
    values; the single statement binds them to its CTEs and parameters.

    `learner_ids` selects the learner to change: in the batch's school, in a
    status the rule applies to, and not the acting admin where the rule
    refuses that. `still_eligible` repeats the status and school conditions
    on the `learners` row itself, so an UPDATE re-checks them on the row it
    locks (a concurrent change between the read and the lock is seen).
    `recently_invited` is true for a `learners` row invited less than
    INVITE_COOLDOWN_SECONDS ago (always false when the cooldown is 0)."""

    learner_ids: Select[Any]
    still_eligible: ColumnElement[bool]
    school_id: ColumnElement[Any]
    batch_id: ColumnElement[Any]
    targets: Sequence[int] | BindParameter[Any]
    token_hash: ColumnElement[Any]
    now: ColumnElement[datetime]
    deletion_due: ColumnElement[datetime]
    recently_invited: ColumnElement[bool]
    dialect: str

    def is_target(self, column: Expression) -> ColumnElement[bool]:
        """The column is one of the action's group or course ids."""
        if isinstance(self.targets, BindParameter):
            return column == any_(self.targets)
        return column.in_(list(self.targets))

    def insert_new(self, table: Table) -> Insert:
        """`INSERT ... ON CONFLICT DO NOTHING`: a row that exists is not new."""
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()


@dataclass(frozen=True)
class Rule:
    """One action on one learner.

    `unchanged` is the reason when the learner is in a status the action
    applies to and yet the effect changed nothing (already a member, invited
    within the cooldown). `already_done`, for the dry run, says which
    eligible learners the effect would not change, given the targets and the
    `recently_invited` condition; None means none. The effect must RETURN one
    column: the id of the learner it changed. `then` gives the statements
    that follow the effect in the same transaction, for the learners it
    changed (the SELECT passed in): an outbox row, revoked credentials."""

    action: Action
    applies_to: frozenset[str]
    skips: Mapping[str, Reason]
    unchanged: Reason
    effect: Callable[[Change], Effect]
    refuses_self: bool = False
    then: Callable[[Select[Any], Change], list[Effect]] | None = None
    already_done: (
        Callable[[Expression, Sequence[int], ColumnElement[bool]], ColumnElement[bool]] | None
    ) = None

    def __post_init__(self) -> None:
        covered = self.applies_to | set(self.skips)
        if covered != ALL_STATUSES or self.applies_to & set(self.skips):
            raise ValueError(f"{self.action}: every status needs exactly one rule")

    def reason_for(self, status: str | None) -> Reason:
        """Why nothing changed for a learner found in `status` (None: not found)."""
        if status is None:
            return Reason.NOT_FOUND
        if status in self.applies_to:
            return self.unchanged
        return self.skips[status]

    def skip_reasons(self) -> dict[Reason, list[str]]:
        """Statuses grouped by their skip reason, for a SQL CASE."""
        grouped: dict[Reason, list[str]] = {}
        for status in sorted(self.skips):
            grouped.setdefault(self.skips[status], []).append(status)
        return grouped

    def reason_case(
        self, status: ColumnElement[Any], is_self: ColumnElement[bool]
    ) -> ColumnElement[Any]:
        """`reason_for` as SQL, the acting admin first where the rule refuses them."""
        whens: list[tuple[ColumnElement[bool], str]] = []
        if self.refuses_self:
            whens.append((is_self, Reason.SELF.value))
        whens.append((status.is_(None), Reason.NOT_FOUND.value))
        whens += [(status.in_(sts), reason.value) for reason, sts in self.skip_reasons().items()]
        return case(*whens, else_=literal(self.unchanged.value))


def revocations(learner_ids: Select[Any], now: ColumnElement[datetime]) -> list[Effect]:
    """Close every way in at once: sessions, shared links (SSO ones included),
    API tokens, and an admin's unfinished batches (cancelled, reason
    `admin_lost_access`). Revoked credentials stay revoked if the learner
    comes back; cancelled batches stay cancelled."""
    return [
        cancel_submitted_by(learner_ids),
        delete(LearnerSession).where(LearnerSession.learner_id.in_(learner_ids)),
        update(SharedLink)
        .where(SharedLink.learner_id.in_(learner_ids), SharedLink.revoked_at.is_(None))
        .values(revoked_at=now),
        update(ApiToken)
        .where(ApiToken.learner_id.in_(learner_ids), ApiToken.revoked_at.is_(None))
        .values(revoked_at=now),
    ]


# The effects. Each changes only the learner `Change.learner_ids` selects.


# `WHERE true` on an INSERT ... SELECT: SQLite cannot otherwise tell the
# SELECT's end from the ON CONFLICT clause (its documented parsing ambiguity).


def _stamp_invited(c: Change) -> Effect:
    """`last_invited_at` set, unless the learner was invited within the
    cooldown. The condition sits in the UPDATE's WHERE, so it is checked
    again on the row it locks: of two batches racing for one learner, the
    second waits for the first to commit, then sees its stamp and skips
    (`recently_invited`), and the learner gets one email."""
    return (
        update(Learner)
        .where(Learner.id.in_(c.learner_ids), c.still_eligible, ~c.recently_invited)
        .values(last_invited_at=c.now)
        .returning(Learner.id)
    )


def _invitation(changed: Select[Any], c: Change) -> list[Effect]:
    """An outbox row for each learner stamped, unique per (batch, learner);
    `workers.mail` sends it after the commit."""
    learners = changed.subquery()
    rows = select(c.school_id, learners.c[0], c.batch_id, c.token_hash, literal(0)).where(true())
    return [
        c.insert_new(_table(Invitation)).from_select(
            ["school_id", "learner_id", "batch_id", "token_hash", "attempts"], rows
        )
    ]


def _recently_invited(
    learner_id: Expression, targets: Sequence[int], recently_invited: ColumnElement[bool]
) -> ColumnElement[bool]:
    return recently_invited


def _revoke(changed: Select[Any], c: Change) -> list[Effect]:
    return revocations(changed, c.now)


def _grant(
    target: type[Group] | type[Course], link: type[GroupMembership] | type[CourseEnrollment]
):
    """Link rows from the learner to each target of this school that is missing."""
    column = GroupMembership.group_id if link is GroupMembership else CourseEnrollment.course_id

    def effect(c: Change) -> Effect:
        learners = c.learner_ids.subquery()
        rows = (
            select(learners.c.id, target.id)
            .join(target, (target.school_id == c.school_id) & c.is_target(target.id))
            .where(true())
        )
        return (
            c.insert_new(_table(link))
            .from_select(["learner_id", column.key], rows)
            .returning(link.learner_id)
        )

    def already_done(
        learner_id: Expression, targets: Sequence[int], recently_invited: ColumnElement[bool]
    ) -> ColumnElement[bool]:
        have = (
            select(func.count())
            .where(link.learner_id == learner_id, column.in_(list(targets)))
            .scalar_subquery()
        )
        return have >= len(set(targets))

    return effect, already_done


def _set_status(**values: Callable[[Change], Any]) -> Callable[[Change], Effect]:
    """An UPDATE of the learner row; each value is computed from the Change."""

    def effect(c: Change) -> Effect:
        return (
            update(Learner)
            .where(Learner.id.in_(c.learner_ids), c.still_eligible)
            .values({name: value(c) for name, value in values.items()})
            .returning(Learner.id)
        )

    return effect


_group, _member = _grant(Group, GroupMembership)
_course, _enrolled = _grant(Course, CourseEnrollment)
_gone: dict[str, Reason] = dict.fromkeys(GONE, Reason.ALREADY_DELETED)

RULES: dict[Action, Rule] = {
    rule.action: rule
    for rule in (
        Rule(
            Action.RESEND_INVITATION,
            applies_to=frozenset({LearnerStatus.INVITED}),
            skips={
                LearnerStatus.ACTIVE: Reason.ALREADY_ACTIVE,
                LearnerStatus.DEACTIVATED: Reason.ALREADY_DEACTIVATED,
                **_gone,
            },
            unchanged=Reason.RECENTLY_INVITED,
            effect=_stamp_invited,
            then=_invitation,
            already_done=_recently_invited,
        ),
        Rule(
            Action.ADD_TO_GROUP,
            applies_to=ALL_STATUSES - GONE,
            skips=_gone,
            unchanged=Reason.ALREADY_MEMBER,
            effect=_group,
            already_done=_member,
        ),
        Rule(
            Action.ADD_TO_COURSE,
            applies_to=ALL_STATUSES - GONE,
            skips=_gone,
            unchanged=Reason.ALREADY_ENROLLED,
            effect=_course,
            already_done=_enrolled,
        ),
        Rule(
            Action.DEACTIVATE_LEARNER,
            applies_to=LIVE,
            skips={LearnerStatus.DEACTIVATED: Reason.ALREADY_DEACTIVATED, **_gone},
            unchanged=Reason.ALREADY_DEACTIVATED,
            # Analytics, settings, memberships and enrollments are kept, so
            # that reactivation restores the learner as they were.
            effect=_set_status(
                status=lambda c: LearnerStatus.DEACTIVATED.value,
                deactivated_at=lambda c: c.now,
                updated_at=lambda c: c.now,
            ),
            refuses_self=True,
            then=_revoke,
        ),
        Rule(
            Action.DELETE_LEARNER,
            applies_to=ALL_STATUSES - GONE,
            skips=_gone,
            unchanged=Reason.ALREADY_DELETED,
            # Shown as deactivated until `finalize_deletion` purges them after
            # the grace period, so a large delete stays cheap per learner.
            effect=_set_status(
                status=lambda c: LearnerStatus.DELETING.value,
                deactivated_at=lambda c: c.now,
                updated_at=lambda c: c.now,
                deletion_due_at=lambda c: c.deletion_due,
            ),
            refuses_self=True,
            then=_revoke,
        ),
        Rule(
            Action.REACTIVATE_LEARNER,
            applies_to=frozenset({LearnerStatus.DEACTIVATED}),
            skips={
                LearnerStatus.INVITED: Reason.NOT_DEACTIVATED,
                LearnerStatus.ACTIVE: Reason.NOT_DEACTIVATED,
                **_gone,
            },
            unchanged=Reason.NOT_DEACTIVATED,
            # Back to `active`, or `invited` if never activated: access comes
            # again from memberships and enrollments, which deactivation kept.
            # Revoked sessions and shared links stay revoked: they are credentials.
            effect=_set_status(
                status=lambda c: case(
                    (Learner.activated_at.is_(None), LearnerStatus.INVITED.value),
                    else_=LearnerStatus.ACTIVE.value,
                ),
                deactivated_at=lambda c: None,
                updated_at=lambda c: c.now,
            ),
            refuses_self=True,
        ),
    )
}

"""Resolving and freezing a selection of learners.

A selection is resolved inside the database and frozen into batch_items with
one `INSERT ... SELECT` in the batch's transaction, so a million learners are
never held in producer memory and the batch acts on exactly who was selected
at submit time, whatever changes later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from producer.schemas import (
    AllNotActivatedSelection,
    LearnerFilter,
    LearnerIdsSelection,
)
from shared.actions import Actor
from shared.models import (
    BatchItem,
    GroupMembership,
    ItemOutcome,
    Learner,
    LearnerStatus,
)
from shared.outcomes import Reason

PENDING = ItemOutcome.PENDING.value

# What the people list shows: a learner being deleted looks deactivated.
SHOWN_AS = {
    "invited": (LearnerStatus.INVITED,),
    "active": (LearnerStatus.ACTIVE,),
    "deactivated": (LearnerStatus.DEACTIVATED, LearnerStatus.DELETING),
}


def shown_status(status: str) -> str:
    return "deactivated" if status == LearnerStatus.DELETING else status


def id_table(session: Session, ids: Sequence[int]):
    """A one-column table `id` of the given ids, bound as one parameter (a
    list of 100,000 ids would exceed PostgreSQL's 65,535 parameters)."""
    if session.get_bind().dialect.name == "postgresql":
        unnest = func.unnest(bindparam("ids", list(ids), type_=ARRAY(BigInteger)))
        return select(unnest.label("id")).subquery()
    each = func.json_each(json.dumps(list(ids))).table_valued("value")
    return select(each.c.value.label("id")).subquery()


def filter_conditions(actor: Actor, people_filter: LearnerFilter) -> list[ColumnElement[bool]]:
    """The people query, always inside the actor's school and never tombstones."""
    conditions = [Learner.school_id == actor.school_id, Learner.status != LearnerStatus.DELETED]
    if people_filter.status:
        statuses = [s for shown in people_filter.status for s in SHOWN_AS[shown]]
        conditions.append(Learner.status.in_(statuses))
    if people_filter.group_id is not None:
        conditions.append(
            exists().where(
                GroupMembership.learner_id == Learner.id,
                GroupMembership.group_id == people_filter.group_id,
            )
        )
    if people_filter.q:
        pattern = f"%{like_literal(people_filter.q.lower())}%"
        conditions.append(
            or_(
                func.lower(Learner.email).like(pattern, escape="\\"),
                func.lower(Learner.name).like(pattern, escape="\\"),
            )
        )
    return conditions


def like_literal(text: str) -> str:
    """`text` as a LIKE pattern that matches only itself: `%` and `_` are
    wildcards, and the filter can select learners to delete."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def selected_learners(session: Session, actor: Actor, selection) -> Select:
    """`SELECT id FROM learners ...` for a filter or all-not-activated selection."""
    if isinstance(selection, AllNotActivatedSelection):
        people_filter = LearnerFilter(status=["invited"])
        exclude: list[int] = []
    else:
        people_filter, exclude = selection.filter, selection.exclude_ids
    query = select(Learner.id).where(*filter_conditions(actor, people_filter))
    if exclude:
        query = query.where(Learner.id.not_in(select(id_table(session, exclude).c.id)))
    return query


def freeze_selection(session: Session, batch_id: int, actor: Actor, selection) -> tuple[int, int]:
    """Insert one item per selected learner; return (total, not found).

    Explicit ids that are not learners of this school become items skipped
    `not_found` right away: another school's learner looks exactly like one
    that does not exist, and costs no message."""
    connection = session.connection()
    if isinstance(selection, LearnerIdsSelection):
        ids = id_table(session, sorted(set(selection.learner_ids)))
        known = and_(Learner.id == ids.c.id, Learner.school_id == actor.school_id)
        rows = select(
            literal(batch_id),
            ids.c.id,
            case(
                (Learner.id.is_(None), ItemOutcome.SKIPPED.value), else_=ItemOutcome.PENDING.value
            ),
            case((Learner.id.is_(None), Reason.NOT_FOUND.value), else_=None),
        ).select_from(ids.outerjoin(Learner, known))
        connection.execute(
            insert(BatchItem).from_select(["batch_id", "learner_id", "outcome", "reason"], rows)
        )
        not_found = connection.execute(
            select(func.count()).where(
                BatchItem.batch_id == batch_id, BatchItem.outcome == ItemOutcome.SKIPPED
            )
        ).scalar_one()
        total = connection.execute(
            select(func.count()).where(BatchItem.batch_id == batch_id)
        ).scalar_one()
        return total, not_found
    learners = selected_learners(session, actor, selection).subquery()
    total = connection.execute(
        insert(BatchItem)
        .from_select(["batch_id", "learner_id"], select(literal(batch_id), learners.c.id))
        .execution_options(preserve_rowcount=True)
    ).rowcount
    return total, 0

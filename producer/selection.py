"""Resolving and freezing a selection of learners.

A selection is resolved inside the database and frozen into batch_items with
one `INSERT ... SELECT` in the batch's transaction, so a million learners are
never held in producer memory and the batch acts on exactly who was selected
at submit time, whatever changes later.

A list of the caller's identifiers (`emails`, `external_ids`) is resolved
to learner ids when it is frozen, a chunk at a time; the items hold learner
ids as for any selection. Identifiers that match no learner are counted and
answered (`unmatched_identifiers`), never stored: they may be personal data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
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
    UNMATCHED_SHOWN,
    AllNotActivatedSelection,
    EmailsSelection,
    ExternalIdsSelection,
    LearnerFilter,
    LearnerIdsSelection,
    Unmatched,
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
# Identifiers resolved per statement: a list may hold the full cap.
IDENTIFIER_CHUNK = 10_000
IdentifierSelection = EmailsSelection | ExternalIdsSelection

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


def text_table(session: Session, values: Sequence[str]):
    """A one-column table `value` of the given strings, bound as one parameter."""
    if session.get_bind().dialect.name == "postgresql":
        unnest = func.unnest(bindparam("values", list(values), type_=ARRAY(String)))
        return select(unnest.label("value")).subquery()
    each = func.json_each(json.dumps(list(values))).table_valued("value")
    return select(each.c.value.label("value")).subquery()


def identifiers(selection: IdentifierSelection) -> list[str]:
    """The selection's identifiers, each once, in the order sent. Emails are
    one identifier whatever their case (`Ann@x.org` and `ann@x.org`)."""
    if isinstance(selection, ExternalIdsSelection):
        return list(dict.fromkeys(selection.external_ids))
    first: dict[str, str] = {}
    for email in selection.emails:
        first.setdefault(email.lower(), email)
    return list(first.values())


def chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), IDENTIFIER_CHUNK):
        yield values[start : start + IDENTIFIER_CHUNK]


def identified_by(selection: IdentifierSelection, value: ColumnElement) -> ColumnElement[bool]:
    """The learner is the one `value` names: by email in any case (served by
    the index on (school_id, lower(email))), or by external id exactly."""
    if isinstance(selection, EmailsSelection):
        return func.lower(Learner.email) == func.lower(value)
    return Learner.external_id == value


def identified_learners(
    session: Session, actor: Actor, selection: IdentifierSelection, chunk: list[str]
) -> Select:
    """`SELECT id FROM learners ...`: the school's learners one of `chunk`
    names, each once. Tombstones (`deleted`) keep their external id, not
    their email, and are selected as their learner id would be (the worker
    skips them `already_deleted`)."""
    values = text_table(session, chunk)
    named = and_(Learner.school_id == actor.school_id, identified_by(selection, values.c.value))
    return select(Learner.id).select_from(values.join(Learner, named)).distinct()


def unmatched_identifiers(session: Session, actor: Actor, selection) -> Unmatched:
    """What an `emails` or `external_ids` selection names that is no learner
    of the school (another school's learner looks exactly like nobody): how
    many, and the first `UNMATCHED_SHOWN` as sent. Nothing for other
    selections, whose unknown ids are items `not_found`."""
    if not isinstance(selection, IdentifierSelection):
        return Unmatched()
    found = Unmatched()
    for chunk in chunks(identifiers(selection)):
        values = text_table(session, chunk)
        missing = set(
            session.scalars(
                select(values.c.value).where(
                    ~exists().where(
                        Learner.school_id == actor.school_id,
                        identified_by(selection, values.c.value),
                    )
                )
            )
        )
        found.count += len(missing)
        room = UNMATCHED_SHOWN - len(found.first)
        if room > 0:
            found.first += [value for value in chunk if value in missing][:room]
    return found


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
    if isinstance(selection, IdentifierSelection):
        return _freeze_identified(session, batch_id, actor, selection), 0
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


def _freeze_identified(
    session: Session, batch_id: int, actor: Actor, selection: IdentifierSelection
) -> int:
    """Insert one item per learner the identifiers name, a chunk at a time;
    return how many. A learner named twice (`Ann@x.org` in one chunk,
    `ANN@x.org` in another) gets one item."""
    connection = session.connection()
    total = 0
    for chunk in chunks(identifiers(selection)):
        learners = identified_learners(session, actor, selection, chunk).subquery()
        new = select(literal(batch_id), learners.c.id).where(
            ~exists().where(BatchItem.batch_id == batch_id, BatchItem.learner_id == learners.c.id)
        )
        total += connection.execute(
            insert(BatchItem)
            .from_select(["batch_id", "learner_id"], new)
            .execution_options(preserve_rowcount=True)
        ).rowcount
    return total
